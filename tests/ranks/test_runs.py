"""The live-run dataset: structures spend the same budget, rows are appended once and a stopped collection resumes."""

from __future__ import annotations

import json
from types import SimpleNamespace as T

import numpy as np
import pytest

from rankrl.ranks.runs import CollectRunsConfig, allocation, collect_runs, read_runs, structure_shares


def _targets(layers: int = 3) -> list[T]:
    shapes = {"q": (32, 32), "k": (32, 32), "v": (32, 32), "o": (32, 32), "up": (32, 64), "down": (64, 32)}
    return [T(name=f"l{i}.{k}", kind=k, layer_index=i, num_layers=layers, in_features=a, out_features=b,
              max_rank=32) for i in range(layers) for k, (a, b) in shapes.items()]  # fmt: skip


@pytest.mark.parametrize("structure", ["uniform", "attention", "mlp", "qv", "depth-up", "depth-down", "random-3"])
def test_every_structure_spends_the_same_budget_where_it_says(structure):
    ts = _targets()
    cost = {t.name: t.in_features + t.out_features for t in ts}
    cap = 2 * sum(cost.values())  # mean rank 2
    ranks = allocation(ts, structure, 2.0, 8)
    used = sum(ranks[n] * c for n, c in cost.items())
    assert 0.9 * cap <= used <= cap
    shares = structure_shares(ts, structure, seed=0)
    on = {t.kind for t, s in zip(ts, shares, strict=True) if s > 0}
    expected = {"attention": {"q", "k", "v", "o"}, "mlp": {"up", "down"}, "qv": {"q", "v"}}
    if structure in expected:
        assert on == expected[structure]
        assert {t.kind for t in ts if ranks[t.name] > 0} == expected[structure]
    if structure == "depth-up":  # later layers get more of the budget
        per_layer = [sum(ranks[t.name] for t in ts if t.layer_index == i) for i in range(3)]
        assert per_layer[0] < per_layer[2]


def test_uniform_structure_is_uniform_lora_and_random_depends_on_its_seed():
    ts = _targets()
    assert set(allocation(ts, "uniform", 4.0, 8).values()) == {4}
    assert not np.allclose(structure_shares(ts, "random-0"), structure_shares(ts, "random-1"))
    np.testing.assert_array_equal(structure_shares(ts, "random-0", 5), structure_shares(ts, "random-0", 5))


def test_bad_structure_names_the_flag():
    with pytest.raises(ValueError, match="--structures"):
        CollectRunsConfig(structures=("uniform", "everything"))
    with pytest.raises(ValueError, match="--budgets"):
        CollectRunsConfig(budgets=(16.0,))


def test_collect_appends_rows_resumes_and_survives_a_torn_line(tmp_path):
    out = tmp_path / "runs.jsonl"
    cfg = CollectRunsConfig(model="tiny-bert", task="default", budgets=(1.0,), structures=("uniform", "mlp"),
                            steps=3, max_eval=16, max_train=64, batch_size=8, threads=1, out=str(out),
                            limit=2)  # fmt: skip
    first = collect_runs(cfg)
    assert [(r["structure"], r["budget_rank"]) for r in first] == [("uniform", 8.0), ("uniform", 1.0)]
    row = first[1]
    assert row["ranks"] == [1] * len(row["modules"]) and row["loss0"] > 0 and row["eval_loss"] > 0
    assert row["eval_loss"] != row["loss0"]  # it trained
    with open(out, "ab") as f:  # a crash in the middle of an append
        f.write(b'{"version": 1, "model": "tin')
    assert len(read_runs(out)) == 2
    rest = collect_runs(CollectRunsConfig(**{**cfg.__dict__, "limit": None}))
    assert [(r["structure"], r["budget_rank"]) for r in rest] == [("mlp", 1.0)]  # the two done are not rerun
    rows = read_runs(out)
    assert len(rows) == 3 and rows[:2] == first
    mlp = rows[2]
    on = {m[0] for m, r in zip(mlp["modules"], mlp["ranks"], strict=True) if r > 0}
    assert on == {"up", "down"}
    assert collect_runs(cfg) == []
    assert [json.loads(line)["structure"] for line in out.read_text().splitlines()] == ["uniform", "uniform", "mlp"]


def test_a_bad_line_in_the_middle_is_an_error_with_its_line_number(tmp_path):
    out = tmp_path / "runs.jsonl"
    out.write_text('{"version": 1}\nnot json\n{"version": 1}\n')
    with pytest.raises(ValueError, match=r"runs.jsonl:2"):
        read_runs(out)

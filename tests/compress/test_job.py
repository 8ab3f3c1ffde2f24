"""``rankrl compress``: writes a factorized model that plain transformers + LowRankLinear reload exactly, its rank
table, PNG and a report with measured latency next to counted FLOPs; bad input is refused with the flag."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from rankrl.cli import main
from rankrl.compress.factorize import LowRankLinear
from rankrl.compress.job import CompressArgs, compress, load_compressed

FLAGS = ["--env.model", "tiny-llama", "--env.texts", "arith", "--env.max_length", "16", "--env.max_modules", "16",
         "--latency_seq", "16"]  # fmt: skip


def test_compress_writes_a_model_that_reloads_exactly(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compress", *FLAGS, "--budget", "0.3", "--method", "uniform", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "counted speed-up" in printed and "measured speed-up" in printed
    report = json.loads((out / "compress.json").read_text())
    assert report["flops_fraction"] <= 0.3 and report["linear_flops"] < report["linear_flops_dense"]
    assert set(report) >= {"latency_per_token_b1", "latency_per_token_b8", "peak_forward_bytes", "perplexity"}
    with (out / "ranks.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {int(r["rank"]) for r in rows} == set(report["ranks"].values())
    assert (out / "ranks.png").stat().st_size > 0
    model = load_compressed(out)
    assert sum(isinstance(m, LowRankLinear) for m in model.modules()) == 8
    from rankrl.compress.env import AttentionRankEnv

    env = AttentionRankEnv(model="tiny-llama", texts="arith", max_length=16, max_modules=16)
    small = env.spectra.factorize(env.model, report["ranks"])
    ids = torch.randint(0, 100, (2, 10))
    with torch.inference_mode():
        assert torch.allclose(model(input_ids=ids).logits, small(input_ids=ids).logits, atol=1e-5)


def test_methods_differ_and_bad_input_names_the_flag(tmp_path):
    from rankrl.compress.env import AttentionRankConfig, AttentionRankEnv

    env = AttentionRankEnv(model="tiny-llama", texts="arith", max_length=16, max_modules=16)
    cfg = AttentionRankConfig(model="tiny-llama", texts="arith", max_length=16, max_modules=16)
    ranks = {}
    for m in ("uniform", "greedy", "energy"):
        args = CompressArgs(env=cfg, budget=0.4, method=m, out=str(tmp_path / m), latency_batches=(1,), latency_seq=8)
        ranks[m] = compress(args, env=env)["ranks"]
    assert ranks["uniform"] != ranks["greedy"]
    with pytest.raises(ValueError, match="--method policy and --policy DIR"):
        CompressArgs(method="policy")
    with pytest.raises(ValueError, match="--budget must be in"):
        CompressArgs(budget=0.0)
    assert main(["compress", *FLAGS, "--budget", "0.001", "--out", str(tmp_path / "x")]) == 2

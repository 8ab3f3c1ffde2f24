"""Live per-module rank masks: kept weights/optimizer state survive a change; export reloads exactly in PEFT."""

from __future__ import annotations

import json

import pytest
import torch

from rankrl.models import load_model
from rankrl.ranks.lora import RankedLoRA, RankPatternError, check_pattern_keys, load_exported, parse_rank_spec
from rankrl.targets import find_target_modules


def _batch(n=4, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(10, 500, (n, length), generator=g), "labels": torch.tensor([0, 1] * (n // 2))}


def _train(lora, opt, steps, seed=0):
    lora.peft_model.train()
    for i in range(steps):
        lora.peft_model(**_batch(seed=seed + i)).loss.backward()
        opt.step()
        opt.zero_grad()


def _ab(lora, name):
    layer = lora.peft_model.base_model.model.get_submodule(name)
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight


@pytest.fixture
def tiny_bert_lora():
    torch.manual_seed(0)
    model = load_model("tiny-bert").model
    lora = RankedLoRA(model, {t.name: 4 for t in find_target_modules(model)}, r_max=8, alpha=16)
    opt = torch.optim.AdamW(lora.trainable_parameters(), lr=1e-2)
    _train(lora, opt, 3)
    return lora, opt


def test_rank_change_keeps_kept_weights_and_optimizer_state(tiny_bert_lora):
    lora, opt = tiny_bert_lora
    names = [t.name for t in lora.targets]
    shrink, grow = names[0], names[1]
    A_s, B_s = (p.detach().clone() for p in _ab(lora, shrink))
    A_g, B_g = (p.detach().clone() for p in _ab(lora, grow))
    state_s = {k: v.clone() for k, v in opt.state[_ab(lora, shrink)[0]].items()}
    state_g = {k: v.clone() for k, v in opt.state[_ab(lora, grow)[1]].items()}
    assert state_s["exp_avg"][:4].abs().sum() > 0  # the kept directions really have state to lose

    change = lora.set_ranks({n: 2 if n == shrink else 6 if n == grow else 4 for n in names}, opt)
    assert change.shrunk == {shrink: (4, 2)} and change.grown == {grow: (4, 6)}

    A, B = _ab(lora, shrink)
    assert torch.equal(A[:2], A_s[:2]) and torch.equal(B[:, :2], B_s[:, :2])
    assert torch.equal(opt.state[A]["exp_avg"][:2], state_s["exp_avg"][:2])
    assert torch.equal(opt.state[A]["exp_avg_sq"][:2], state_s["exp_avg_sq"][:2])
    assert B[:, 2:].abs().sum() == 0 and opt.state[A]["exp_avg"][2:].abs().sum() == 0  # dropped: fresh init
    A, B = _ab(lora, grow)
    assert torch.equal(A[:4], A_g[:4]) and torch.equal(B[:, :4], B_g[:, :4])
    assert torch.equal(opt.state[B]["exp_avg"][:, :4], state_g["exp_avg"][:, :4])
    assert lora.scaling[grow] == lora.scaling[shrink] == 16 / 4  # scaling kept across the change


def test_growing_does_not_change_outputs_and_rank_zero_switches_off(tiny_bert_lora):
    lora, _ = tiny_bert_lora
    model = lora.peft_model.eval()
    x = _batch(seed=99)["input_ids"]
    with torch.no_grad():
        before = model(input_ids=x).logits
        lora.set_ranks({t.name: 7 for t in lora.targets})  # new directions start with B = 0
        assert torch.allclose(model(input_ids=x).logits, before, atol=1e-6)
        lora.set_ranks({t.name: 0 for t in lora.targets})
        off = model(input_ids=x).logits
        for t in lora.targets:  # reference: every LoRA update zeroed by hand (base model + trained head)
            _ab(lora, t.name)[1].zero_()
        lora.set_ranks({t.name: 8 for t in lora.targets})
        base = model(input_ids=x).logits
    assert not torch.allclose(before, off)
    assert torch.allclose(off, base, atol=1e-6)


@pytest.mark.parametrize("name,kind", [("tiny-bert", "classification"), ("tiny-qwen", "causal_lm")])
def test_export_reloads_in_plain_peft_with_same_outputs(tmp_path, name, kind):
    torch.manual_seed(0)
    lora = RankedLoRA(load_model(name, task_kind=kind).model, r_max=8, alpha=16,
                      task_type="SEQ_CLS" if kind == "classification" else "CAUSAL_LM")  # fmt: skip
    names = [t.name for t in lora.targets]
    lora.set_ranks({n: [0, 1, 3, 8][i % 4] for i, n in enumerate(names)})
    opt = torch.optim.AdamW(lora.trainable_parameters(), lr=1e-2)
    batch = _batch()
    if kind == "causal_lm":
        batch["labels"] = batch["input_ids"]
    for _ in range(3):
        lora.peft_model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    lora.set_ranks({n: [2, 0, 5, 8][i % 4] for i, n in enumerate(names)}, opt)  # mid-run change, then train on
    lora.peft_model(**batch).loss.backward()
    opt.step()
    model = lora.peft_model.eval()
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"]).logits

    out = lora.export(tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    active = {n: r for n, r in lora.ranks.items() if r}
    assert sorted(config["target_modules"]) == sorted(active)
    assert {**{n: config["r"] for n in active}, **config["rank_pattern"]} == active

    fresh = load_model(name, task_kind=kind).model  # same seed -> same random base as the tiny model above
    reloaded = load_exported(fresh, out).eval()  # also asserts every lora_A holds its intended rank
    with torch.no_grad():
        got = reloaded(input_ids=batch["input_ids"]).logits
    assert (got - expected).abs().max().item() <= 1e-5


def test_pattern_keys_that_match_no_module_or_several_fail_loudly():
    from peft import LoraConfig

    model = load_model("tiny-bert").model
    check_pattern_keys(model, LoraConfig(target_modules=["bert.encoder.layer.0.output.dense"]))
    with pytest.raises(RankPatternError, match="matches 0 modules"):
        check_pattern_keys(model, LoraConfig(target_modules=["query"], rank_pattern={"layer.9.query": 4}))
    loose = LoraConfig(target_modules=["bert.encoder.layer.0.output.dense"], rank_pattern={"output.dense": 4})
    check_pattern_keys(model, loose)  # a suffix matching several modules is legal PEFT ...
    with pytest.raises(RankPatternError, match="matches 4 modules"):  # ... but not in an export: it also hits
        check_pattern_keys(model, loose, exact=True)  # attention.output.dense


def test_bad_ranks_are_clear_errors():
    lora = RankedLoRA(load_model("tiny-bert").model, r_max=4)
    names = [t.name for t in lora.targets]
    with pytest.raises(ValueError, match="no entry for"):
        lora.set_ranks({names[0]: 2})
    with pytest.raises(ValueError, match="unknown module"):
        lora.set_ranks({**{n: 1 for n in names}, "bert.nope": 1})
    with pytest.raises(ValueError, match="raise r_max"):
        lora.set_ranks({n: 5 for n in names})
    with pytest.raises(ValueError, match="lower r_max"):
        RankedLoRA(load_model("tiny-bert").model, r_max=65)  # hidden size is 64
    with pytest.raises(ValueError, match="nothing to export"):
        lora.set_ranks({n: 0 for n in names})
        lora.lora_config()


def test_rank_specs(tmp_path):
    targets = RankedLoRA(load_model("tiny-bert").model, r_max=4).targets
    assert set(parse_rank_spec("uniform:3", targets, 4).values()) == {3}
    by_kind = parse_rank_spec("kind:q=4,v=2,default=0", targets, 4)
    assert {t.kind: by_kind[t.name] for t in targets} == {"q": 4, "v": 2, "k": 0, "o": 0, "up": 0, "down": 0}
    f = tmp_path / "ranks.json"
    f.write_text(json.dumps({"layer.1.attention.self.query": 4, "default": 1}))
    from_file = parse_rank_spec(str(f), targets, 4)
    assert from_file["bert.encoder.layer.1.attention.self.query"] == 4 and sum(from_file.values()) == 4 + 11
    f.write_text(json.dumps({"layer.7.query": 4}))
    with pytest.raises(RankPatternError, match="matches no adapted module"):
        parse_rank_spec(str(f), targets, 4)
    with pytest.raises(ValueError, match="no rank to kind"):
        parse_rank_spec("kind:q=4", targets, 4)


def test_svd_shrink_keeps_the_best_low_rank_part(tiny_bert_lora):
    lora, opt = tiny_bert_lora
    name = lora.targets[0].name
    A, B = _ab(lora, name)
    with torch.no_grad():
        B.normal_()  # make the update full-rank-ish so truncation and SVD differ
        full = (B[:, :4] @ A[:4]).clone()
        best = torch.linalg.svdvals(full)[2:].square().sum()
    lora.shrink = "svd"
    lora.set_ranks({t.name: 2 if t.name == name else 4 for t in lora.targets}, opt)
    with torch.no_grad():
        err = (B[:, :2] @ A[:2] - full).square().sum()
    assert torch.isclose(err, best, rtol=1e-3)


def test_overlapping_rank_file_keys_are_an_error_not_a_silent_winner(tmp_path):
    targets = RankedLoRA(load_model("tiny-bert").model, r_max=4).targets
    f = tmp_path / "ranks.json"
    # "output.dense" also ends "attention.output.dense": before, both modules silently got 2
    f.write_text(json.dumps({"attention.output.dense": 4, "output.dense": 2, "default": 1}))
    with pytest.raises(RankPatternError, match=r"'attention.output.dense' and 'output.dense' both match .*full module"):
        parse_rank_spec(str(f), targets, 4)
    f.write_text(json.dumps({"layer.0.attention.output.dense": 4, "layer.0.output.dense": 2, "default": 1}))
    ranks = parse_rank_spec(str(f), targets, 4)  # names that each match one module are fine
    assert ranks["bert.encoder.layer.0.attention.output.dense"] == 4 and ranks["bert.encoder.layer.0.output.dense"] == 2


def test_export_failing_half_way_keeps_the_previous_adapter(tmp_path, monkeypatch):
    import safetensors.torch

    lora = RankedLoRA(load_model("tiny-bert").model, r_max=4)
    out = lora.export(tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    lora.set_ranks({t.name: 2 for t in lora.targets})

    def half_then_fail(tensors, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a safetensors file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        lora.export(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old adapter, whole
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temp or set-aside folder left
    monkeypatch.undo()
    lora.export(out)  # a good export replaces it, again leaving nothing beside it
    assert json.loads((out / "ranks.json").read_text()) == lora.ranks and [p.name for p in tmp_path.iterdir()] == [
        "adapter"]


def test_adapter_config_is_checked_before_it_replaces_the_old_one(tmp_path):
    from rankrl.ranks.lora import write_adapter_config

    targets = find_target_modules(load_model("tiny-bert").model)
    write_adapter_config({t.name: 2 for t in targets}, tmp_path, "tiny-bert", alpha=16)
    before = (tmp_path / "adapter_config.json").read_text()
    with pytest.raises(RankPatternError, match="matches 0 modules"):  # a module tiny-qwen does not have
        write_adapter_config({t.name: 4 for t in targets}, tmp_path, "tiny-qwen", alpha=16, task_kind="causal_lm")
    assert (tmp_path / "adapter_config.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json"]


def test_forward_reads_only_the_active_directions_and_rank_zero_skips_the_adapter(tiny_bert_lora):
    """Compute follows rank: inactive rows of A / columns of B are never read (NaN there changes nothing), and a
    rank-0 module does not run its adapter at all (its LoRA weights get no gradient)."""
    lora, _ = tiny_bert_lora
    names = [t.name for t in lora.targets]
    lora.set_ranks({n: (2 if i == 0 else 0 if i == 1 else 4) for i, n in enumerate(names)})
    lora.peft_model.eval()
    with torch.no_grad():
        before = lora.peft_model(**_batch()).logits
        A, B = _ab(lora, names[0])
        A[2:] = float("nan")
        B[:, 2:] = float("nan")
        A0, B0 = _ab(lora, names[1])
        A0.fill_(float("nan"))
        B0.fill_(float("nan"))
        after = lora.peft_model(**_batch()).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    with torch.no_grad():
        A0.zero_(), B0.zero_(), A[2:].zero_(), B[:, 2:].zero_()
    lora.peft_model.zero_grad(set_to_none=True)
    lora.peft_model.train()
    lora.peft_model(**_batch()).loss.backward()
    assert A0.grad is None and B0.grad is None  # the adapter never ran
    assert A.grad is not None and float(A.grad[2:].abs().sum()) == 0.0 and float(A.grad[:2].abs().sum()) > 0

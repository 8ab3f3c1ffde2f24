"""Tests for rankrl.ranks.features on tiny BERT / Llama models built from configs (no downloads)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from rankrl.ranks.features import (
    FEATURE_NAMES,
    SPECTRUM_FEATURE_NAMES,
    STATIC_FEATURE_NAMES,
    LayerFeatures,
    base_weight,
    compute_features,
    gradient_sensitivity,
    spectrum_features,
)
from rankrl.targets import find_target_modules


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    return BertForSequenceClassification(cfg)


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(cfg)


def _batches(kind: str, n: int = 2, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 100, (4, 8), generator=g)
        labels = torch.randint(0, 2, (4,), generator=g) if kind == "bert" else ids.clone()
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_shape_finite_and_model_agnostic_columns(kind):
    model = _bert() if kind == "bert" else _llama()
    targets = find_target_modules(model)
    feats = compute_features(model, targets, _batches(kind))
    mat = feats.matrix()
    assert mat.shape == (len(targets), len(FEATURE_NAMES)) == (len(targets), 22)
    assert mat.dtype == np.float32 and np.isfinite(mat).all()
    # Same column meaning on both models: one-hot kinds sum to 1, depth in [0, 1], O(1) scale.
    kind_cols = [FEATURE_NAMES.index(c) for c in FEATURE_NAMES if c.startswith("kind_")]
    assert np.allclose(mat[:, kind_cols].sum(axis=1), 1.0)
    assert mat[:, 0].min() == 0.0 and mat[:, 0].max() == 1.0
    assert np.abs(mat).max() < 20
    assert FEATURE_NAMES[-1] == "rank_frac" and np.all(mat[:, -1] == 0)
    # cost_share: the module's share of one rank everywhere x the module count (1 = even), in+out proportional
    share = mat[:, FEATURE_NAMES.index("cost_share")]
    width = np.array([t.in_features + t.out_features for t in targets], dtype=np.float64)
    assert share.mean() == pytest.approx(1.0, rel=1e-5) and np.allclose(share, width / width.mean(), rtol=1e-5)
    sens = mat[:, FEATURE_NAMES.index("grad_sens_rel")]
    assert sens.mean() == pytest.approx(1.0, rel=1e-5)
    assert np.allclose(mat[:, FEATURE_NAMES.index("grad_sens_log")], np.log1p(sens), atol=1e-6)


def test_known_spectrum():
    model = _bert()
    targets = find_target_modules(model)
    t = next(t for t in targets if t.kind == "q")
    w = torch.zeros(32, 32)
    w[0, 0], w[1, 1] = 4.0, 1.0
    # A rotation leaves the singular values [4, 1, 0, ...] unchanged.
    q, _ = torch.linalg.qr(torch.randn(32, 32))
    with torch.no_grad():
        base_weight(model, t.name).copy_(q @ w)
    row = dict(zip(SPECTRUM_FEATURE_NAMES, spectrum_features(model, [t])[0].tolist(), strict=True))
    assert row["stable_rank_frac"] == pytest.approx(17 / 16 / 32, rel=1e-4)
    assert row["top1_energy"] == pytest.approx(16 / 17, rel=1e-4)
    assert row["top8_energy"] == pytest.approx(1.0, rel=1e-5)
    assert row["top32_energy"] == pytest.approx(1.0, rel=1e-5)
    entropy = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert row["eff_rank_frac"] == pytest.approx(math.exp(entropy) / 32, rel=1e-4)


def test_zero_weight_has_zero_sensitivity_and_spectrum():
    model = _bert()
    targets = find_target_modules(model)
    with torch.no_grad():
        base_weight(model, targets[3].name).zero_()
    grads = gradient_sensitivity(model, targets, _batches("bert"))
    assert grads.shape == (len(targets), 3)
    assert grads[3, 0] == 0.0 and grads[3, 1] == 0.0
    # Layer-1 modules stay sensitive. (Layer-0 q/k lose theirs too: with zero values and zero bias the
    # attention output no longer depends on the attention pattern.)
    assert targets[3].layer_index == 0 and (grads[[t.layer_index == 1 for t in targets], 0] > 0).all()
    assert np.all(spectrum_features(model, [targets[3]]) == 0)


def test_gradient_sensitivity_matches_manual_taylor():
    model = _llama()
    targets = find_target_modules(model)
    batches = _batches("llama", n=2)
    got = gradient_sensitivity(model, targets, batches)
    ref = _llama()
    ref.eval()
    raw, norms = np.zeros(len(targets)), np.zeros(len(targets))
    for batch in batches:
        ref.zero_grad(set_to_none=True)
        ref(**batch).loss.backward()
        for i, t in enumerate(targets):
            w = base_weight(ref, t.name)
            raw[i] += (w * w.grad).abs().mean().item()
            norms[i] += w.grad.norm().item()
    np.testing.assert_allclose(got[:, 0], raw / raw.mean(), rtol=1e-4)
    np.testing.assert_allclose(got[:, 2], norms / norms.mean(), rtol=1e-4)


def test_model_state_restored():
    model = _bert()
    model.train()
    model.bert.embeddings.requires_grad_(False)
    # A mixed train/eval state must survive too, not just the top-level flag.
    next(m for m in model.modules() if isinstance(m, torch.nn.Dropout)).eval()
    targets = find_target_modules(model)
    existing = torch.ones_like(base_weight(model, targets[0].name))
    base_weight(model, targets[0].name).grad = existing
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    gradient_sensitivity(model, targets, _batches("bert"))
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert base_weight(model, targets[0].name).grad is existing
    assert all(p.grad is None for n, p in model.named_parameters() if n != targets[0].name + ".weight")


def test_no_batches_gives_neutral_gradient_columns():
    model = _bert()
    mat = compute_features(model).matrix()
    cols = [FEATURE_NAMES.index(c) for c in ("grad_sens_rel", "grad_sens_log", "grad_norm_rel")]
    np.testing.assert_allclose(mat[:, cols], [[1.0, math.log1p(1.0), 1.0]] * len(mat), rtol=1e-6)


def test_peft_wrapped_model_uses_base_weight():
    peft = pytest.importorskip("peft")
    model = _bert()
    plain = compute_features(model, find_target_modules(model))
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["query", "value"]))
    targets = find_target_modules(wrapped)
    assert any("base_layer" in n for n, _ in wrapped.named_parameters())
    feats = compute_features(wrapped, targets, _batches("bert"))
    assert feats.static.shape == plain.static.shape and np.isfinite(feats.static).all()
    spec = slice(STATIC_FEATURE_NAMES.index("stable_rank_frac"), STATIC_FEATURE_NAMES.index("grad_sens_rel"))
    np.testing.assert_allclose(feats.static[:, spec], plain.static[:, spec], rtol=1e-5)
    # LoRA parameters were trainable before and must still be afterwards.
    assert all(p.requires_grad for n, p in wrapped.named_parameters() if "lora_" in n)


def test_rank_frac_column():
    model = _llama()
    feats = compute_features(model)
    ranks = {name: i % 9 for i, name in enumerate(feats.names)}
    mat = feats.matrix(ranks, r_max=8)
    np.testing.assert_allclose(mat[:, -1], [ranks[n] / 8 for n in feats.names])
    np.testing.assert_array_equal(mat[:, : feats.static.shape[1]], feats.static)
    with pytest.raises(ValueError, match="r_max"):
        feats.matrix(ranks)
    with pytest.raises(ValueError, match="missing"):
        feats.matrix({}, r_max=8)
    with pytest.raises(ValueError, match="outside"):
        feats.matrix({n: 9 for n in feats.names}, r_max=8)


def test_layer_features_validates_and_freezes():
    model = _bert()
    targets = tuple(find_target_modules(model))
    with pytest.raises(ValueError, match="shape"):
        LayerFeatures(targets, np.zeros((1, 2)))
    feats = LayerFeatures(targets, np.zeros((len(targets), len(STATIC_FEATURE_NAMES))))
    with pytest.raises(ValueError):
        feats.static[0, 0] = 1.0


def _raising_forward(*args, **kwargs):
    raise AssertionError("the model must not run on a cache hit")


def test_cache_hit_does_not_run_model(tmp_path):
    model = _bert()
    targets = find_target_modules(model)
    first = compute_features(model, targets, _batches("bert"), cache_dir=tmp_path, cache_key="bert|t|2")
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temp file left behind
    model.forward = _raising_forward
    second = compute_features(model, targets, _batches("bert"), cache_dir=tmp_path, cache_key="bert|t|2")
    np.testing.assert_array_equal(first.static, second.static)
    with pytest.raises(AssertionError, match="cache hit"):  # a different key misses and runs the model
        compute_features(model, targets, _batches("bert"), cache_dir=tmp_path, cache_key="bert|t|3")
    with pytest.raises(ValueError, match="together"):
        compute_features(model, targets, cache_dir=tmp_path)


def test_cache_for_other_target_names_is_ignored(tmp_path):
    model = _bert()
    targets = find_target_modules(model)
    feats = compute_features(model, targets, cache_dir=tmp_path, cache_key="k")
    (path,) = tmp_path.iterdir()
    # Same file name, but stored for other modules (a hash collision or a stale file): must be recomputed.
    np.savez(
        path,
        static=np.full_like(feats.static, 7.0),
        target_names=np.asarray([f"other.{i}" for i in range(len(targets))]),
        feature_names=np.asarray(STATIC_FEATURE_NAMES),
        key=np.asarray("k"),
    )
    again = compute_features(model, targets, cache_dir=tmp_path, cache_key="k")
    np.testing.assert_array_equal(again.static, feats.static)
    # ... and the stale file was overwritten with the right names.
    with np.load(path) as data:
        assert data["target_names"].tolist() == [t.name for t in targets]


def test_non_finite_gradients_are_an_error_not_neutral_features():
    model = _bert()
    targets = find_target_modules(model)
    batches = _batches("bert")
    with torch.no_grad():  # a diverged model: every gradient is NaN
        base_weight(model, targets[0].name).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"gradient sensitivity is not finite for \d+ module.*--task none"):
        gradient_sensitivity(model, targets, batches)
    with pytest.raises(ValueError, match="not finite"):
        compute_features(model, targets, batches)

"""Low-rank factorization for inference: exact at full rank, error falls with rank, ASVD helps where activations
are uneven, and a factorized model really holds the smaller matmuls."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rankrl.compress.factorize import LowRankLinear, Spectra, activation_scales, low_rank_flops
from rankrl.models import load_model


class Wrap(nn.Module):
    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.proj = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _layer(seed: int = 0, i: int = 48, o: int = 40) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(i, o)


def test_full_rank_reconstructs_exactly_and_error_falls_with_rank():
    model = Wrap(_layer())
    spectra = Spectra(model, ["proj"])
    svd = spectra.svds["proj"]
    x = torch.randn(5, 48)
    full = svd.module(svd.full_rank, torch.float32)
    assert torch.allclose(full(x), model(x), atol=1e-5)
    errors = [svd.relative_error(r) for r in range(1, svd.full_rank + 1)]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)) and errors[-1] < 1e-5
    assert svd.energy_kept(svd.full_rank) == pytest.approx(1.0) and svd.energy_kept(1) < 0.2
    assert svd.rank_for_energy(svd.energy_kept(7)) == 7


def test_activation_aware_svd_beats_plain_svd_when_channels_are_uneven():
    model = Wrap(_layer(1))
    gain = torch.ones(48)
    gain[:6] = 30.0  # six input channels carry most of the activation
    batches = [{"x": torch.randn(64, 48) * gain} for _ in range(4)]
    scales = activation_scales(model, ["proj"], batches)
    assert scales["proj"].shape == (48,) and scales["proj"][:6].min() > scales["proj"][6:].max()
    x = torch.randn(256, 48) * gain
    y = model(x).detach()
    errs = {}
    for tag, sc in (("plain", None), ("asvd", scales)):
        layer = Spectra(model, ["proj"], sc).svds["proj"].module(8, torch.float32)
        errs[tag] = float(torch.linalg.norm(layer(x).detach() - y) / torch.linalg.norm(y))
    assert errs["asvd"] < 0.7 * errs["plain"], errs


def test_factorized_tiny_llama_runs_the_smaller_matmuls_and_counts_its_flops():
    loaded = load_model("tiny-llama", task_kind="causal_lm")
    model = loaded.model.eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(("q_proj", "o_proj"))]
    spectra = Spectra(model, names)
    low = {n: 4 for n in names}
    small = spectra.factorize(model, low)
    replaced = [n for n, m in small.named_modules() if isinstance(m, LowRankLinear)]
    assert sorted(replaced) == sorted(names) and not any(isinstance(m, LowRankLinear) for m in model.modules())
    assert spectra.flops(low) < spectra.dense_flops()
    svd = spectra.svds[names[0]]
    assert spectra.flops(low) == len(names) * low_rank_flops(svd.in_features, svd.out_features, 4)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.inference_mode():
        out_small, out_dense = small(input_ids=ids).logits, model(input_ids=ids).logits
    assert out_small.shape == out_dense.shape and not torch.allclose(out_small, out_dense)
    # at or above break-even the dense projection is kept (factorizing would cost more)
    keep = spectra.factorize(model, {names[0]: svd.break_even_rank + 1})
    assert not any(isinstance(m, LowRankLinear) for m in keep.modules())
    with pytest.raises(ValueError, match="ranks must be >= 1"):
        spectra.factorize(model, {names[0]: 0})
    with pytest.raises(ValueError, match="no SVD for"):
        spectra.factorize(model, {"nope": 2})


def test_measurements_see_the_factorization():
    from rankrl.compress.measure import (
        hidden_fidelity,
        peak_forward_bytes,
        perplexity,
        token_batches,
        weight_bytes,
    )

    loaded = load_model("tiny-llama", task_kind="causal_lm")
    model = loaded.model.eval()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(("q_proj", "o_proj"))]
    spectra = Spectra(model, names)
    batches = token_batches(loaded.tokenizer, ["12+7=19", "3+4=7 and 5+5=10", "99-9=90"], batch_size=2)
    dense_ppl = perplexity(model, batches)
    svd = spectra.svds[names[0]]
    full = spectra.factorize(model, {n: svd.break_even_rank for n in names})
    tiny = spectra.factorize(model, dict.fromkeys(names, 1))
    assert math.isfinite(dense_ppl) and dense_ppl > 1
    fid_full, fid_tiny = hidden_fidelity(model, full, batches), hidden_fidelity(model, tiny, batches)
    assert fid_full["hidden_rel_error"] < fid_tiny["hidden_rel_error"]
    assert fid_tiny["embedding_cosine"] <= fid_full["embedding_cosine"] <= 1.0 + 1e-6
    assert weight_bytes(tiny) < weight_bytes(model)
    assert peak_forward_bytes(model, 2, 16) > 0

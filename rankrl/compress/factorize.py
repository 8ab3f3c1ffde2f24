"""Low-rank factorization of a model's linear projections for inference (DR-RL): truncated SVD, optionally
activation-aware (ASVD), with every rank of every module available from one SVD per module.

A projection ``y = W x + b`` (``W``: out x in) becomes two smaller matmuls, ``y = B (A x) + b`` with ``A``: r x in
and ``B``: out x r (:class:`LowRankLinear`), which is cheaper whenever ``r (in + out) < in * out``. Nothing is
masked: the factorized model really runs the smaller matmuls, so its measured speed follows the counted FLOPs.

Activation-aware (ASVD, Yuan et al. 2023): input channels that carry large activations matter more, so the SVD is
taken of ``W diag(s)`` with ``s_j = mean|x_j|^alpha`` over a few calibration batches, and the scaling is undone
in ``A``: ``W ~ (U_r S_r^(1/2)) (S_r^(1/2) V_r^T diag(1/s))``. With ``s = 1`` this is the plain truncated SVD.

:class:`Spectra` holds the full SVD of every module once; :meth:`Spectra.factorize` then builds the factorized
model for any allocation by slicing (no new SVD), which makes every decision of a rank policy cheap to try live.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LowRankLinear", "ModuleSVD", "Spectra", "activation_scales", "dense_flops", "low_rank_flops"]


class LowRankLinear(nn.Module):
    """``y = second(first(x))``: ``first`` maps ``in -> rank`` (no bias), ``second`` maps ``rank -> out`` (with the
    original bias). A drop-in for ``nn.Linear`` (same ``in_features`` / ``out_features``, same call)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 dtype: torch.dtype | None = None) -> None:  # fmt: skip
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [1, {min(in_features, out_features)}], got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def break_even_rank(in_features: int, out_features: int) -> int:
    """The largest rank at which a factorization is strictly cheaper than the dense projection
    (``r (in + out) < in * out``)."""
    return max(0, math.ceil(in_features * out_features / (in_features + out_features)) - 1)


def swap_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` in ``model``; returns the module that was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def dense_flops(in_features: int, out_features: int) -> int:
    """Multiply-accumulate FLOPs per token of a dense projection (``2 * in * out``)."""
    return 2 * in_features * out_features


def low_rank_flops(in_features: int, out_features: int, rank: int) -> int:
    """FLOPs per token of :class:`LowRankLinear` at ``rank`` (``2 r (in + out)``); a rank that would cost more
    than the dense projection is never used (:meth:`Spectra.factorize` keeps the dense one), so this is capped."""
    return min(2 * rank * (in_features + out_features), dense_flops(in_features, out_features))


@dataclass
class ModuleSVD:
    """The SVD of one (activation-scaled) weight: ``W diag(scale) = U diag(S) Vh``, kept on CPU in float32."""

    name: str
    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    @property
    def in_features(self) -> int:
        return self.Vh.shape[1]

    @property
    def out_features(self) -> int:
        return self.U.shape[0]

    @property
    def full_rank(self) -> int:
        return self.S.shape[0]

    @property
    def break_even_rank(self) -> int:
        """The largest rank at which the factorization is strictly cheaper than the dense projection."""
        return break_even_rank(self.in_features, self.out_features)

    def energy_kept(self, rank: int) -> float:
        """Share of the squared singular values (of the scaled weight) the top ``rank`` directions keep."""
        s2 = self.S.double() ** 2
        return float(s2[:rank].sum() / s2.sum()) if float(s2.sum()) > 0 else 1.0

    def rank_for_energy(self, energy: float) -> int:
        """The fewest directions that keep at least ``energy`` of the squared spectrum (>= 1)."""
        s2 = self.S.double() ** 2
        cum = torch.cumsum(s2, 0) / s2.sum()
        return int(min(self.full_rank, int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype))) + 1))

    def relative_error(self, rank: int) -> float:
        """``||W - W_r||_F / ||W||_F`` of the unscaled weight at ``rank`` (0 at full rank)."""
        w = self.weight(self.full_rank)
        return float(torch.linalg.norm(w - self.weight(rank)) / torch.linalg.norm(w).clamp_min(1e-12))

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` with ``B @ A`` the rank-``rank`` approximation of the original (unscaled) weight."""
        r = max(0, min(rank, self.full_rank))
        root = self.S[:r].sqrt()
        A = (root[:, None] * self.Vh[:r]) / self.scale[None, :]
        B = self.U[:, :r] * root[None, :]
        return A, B

    def weight(self, rank: int) -> torch.Tensor:
        A, B = self.factors(rank)
        return B @ A

    def module(self, rank: int, dtype: torch.dtype) -> LowRankLinear:
        """A :class:`LowRankLinear` holding the rank-``rank`` factors (in ``dtype``)."""
        A, B = self.factors(rank)
        layer = LowRankLinear(self.in_features, self.out_features, rank, bias=self.bias is not None, dtype=dtype)
        with torch.no_grad():
            layer.first.weight.copy_(A)
            layer.second.weight.copy_(B)
            if self.bias is not None:
                layer.second.bias.copy_(self.bias)
        return layer


def activation_scales(model: nn.Module, names: Sequence[str], batches: Iterable[Mapping[str, torch.Tensor]], *,
                      alpha: float = 0.5, eps: float = 1e-6) -> dict[str, torch.Tensor]:  # fmt: skip
    """ASVD channel scales ``mean|x_j|^alpha`` of the inputs of the modules ``names`` over calibration ``batches``
    (dicts of model inputs), from forward pre-hooks; the model is left unchanged.

    Raises:
        ValueError: a name that is not an ``nn.Linear`` of ``model``, or no batch at all.
    """
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)
    hooks = []
    for name in names:
        layer = modules.get(name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"{name!r} is not an nn.Linear of the model")

        def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float().abs()
            sums[name] = sums.get(name, 0) + x.sum(0)
            counts[name] += x.shape[0]

        hooks.append(layer.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            for batch in batches:
                model(**batch)
    finally:
        for h in hooks:
            h.remove()
    if not sums:
        raise ValueError("no calibration batch reached the modules; pass at least one batch")
    return {n: (sums[n] / counts[n]).clamp_min(eps) ** alpha for n in names}


class Spectra:
    """The SVD of every module in ``names`` of ``model`` (scaled by ``scales`` when given: ASVD), computed once.

    Args:
        model: the dense model (not modified).
        names: full module names of ``nn.Linear`` projections.
        scales: optional per-module input-channel scales (:func:`activation_scales`).
    """

    def __init__(self, model: nn.Module, names: Sequence[str], scales: Mapping[str, torch.Tensor] | None = None):
        modules = dict(model.named_modules())
        self.svds: dict[str, ModuleSVD] = {}
        for name in names:
            layer = modules.get(name)
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"{name!r} is not an nn.Linear of the model")
            w = layer.weight.detach().float().cpu()
            s = (scales[name].float().cpu() if scales is not None else torch.ones(w.shape[1]))
            U, S, Vh = torch.linalg.svd(w * s[None, :], full_matrices=False)
            bias = layer.bias.detach().float().cpu().clone() if layer.bias is not None else None
            self.svds[name] = ModuleSVD(name, U, S, Vh, s, bias)

    @property
    def names(self) -> list[str]:
        return list(self.svds)

    def flops(self, ranks: Mapping[str, int]) -> int:
        """Counted FLOPs per token of the factorized projections (dense where the rank is at/over break-even)."""
        total = 0
        for name, svd in self.svds.items():
            r = ranks.get(name, svd.full_rank)
            total += low_rank_flops(svd.in_features, svd.out_features, r) if r <= svd.break_even_rank else \
                dense_flops(svd.in_features, svd.out_features)  # fmt: skip
        return total

    def dense_flops(self) -> int:
        """FLOPs per token of the projections left dense."""
        return sum(dense_flops(s.in_features, s.out_features) for s in self.svds.values())

    def factorize(self, model: nn.Module, ranks: Mapping[str, int], *, inplace: bool = False) -> nn.Module:
        """``model`` (a deep copy unless ``inplace``) with every module in ``ranks`` replaced by its rank-r
        :class:`LowRankLinear`; a rank at or above the module's break-even rank keeps the dense ``nn.Linear``
        (factorizing it would cost more, not less). Unknown names and ranks < 1 raise."""
        out = model if inplace else copy.deepcopy(model)
        self.swap_in(out, ranks)
        return out

    def swap_in(self, model: nn.Module, ranks: Mapping[str, int]) -> dict[str, nn.Module]:
        """Replace, in place, every module of ``ranks`` below its break-even rank by its rank-r factors; returns the
        replaced modules by name (``restore`` puts them back). Unknown names and ranks < 1 raise."""
        if unknown := sorted(set(ranks) - set(self.svds)):
            raise ValueError(f"no SVD for {unknown}; known modules: {len(self.svds)}")
        if bad := {n: r for n, r in ranks.items() if int(r) < 1}:
            raise ValueError(f"ranks must be >= 1 (a projection cannot be removed), got {bad}")
        replaced = {}
        for name, r in ranks.items():
            svd = self.svds[name]
            if int(r) <= svd.break_even_rank:
                dtype = model.get_submodule(name).weight.dtype
                replaced[name] = swap_module(model, name, svd.module(int(r), dtype))
        return replaced

    @staticmethod
    def restore(model: nn.Module, replaced: Mapping[str, nn.Module]) -> None:
        """Undo :meth:`swap_in`."""
        for name, module in replaced.items():
            swap_module(model, name, module)

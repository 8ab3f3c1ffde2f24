"""Model-agnostic per-module feature rows for rank-allocation policies.

A rank policy encodes every adapted projection's row with *shared* weights, so a policy trained on one model
can act on another with a different number or shape of layers. Every column is therefore scale-free and
roughly O(1): shape columns are log-scaled, spectrum columns are fractions of the module's maximal rank or of
its spectral energy, and gradient columns are relative to the mean over the model's modules.

Column order is fixed by :data:`FEATURE_NAMES` (static columns, then ``cost_share`` and the dynamic ``rank_frac``).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rankrl.atomic import atomic_write
from rankrl.targets import KINDS, TargetModule, find_target_modules

#: log2 widths are divided by this so a 4096-wide projection (a 7B-class hidden size) reads 1.0
_LOG_SCALE = 12.0
#: top-k spectral energy columns (LaMDA++-style: how much of ||W||_F^2 the leading directions hold)
_TOP_K = (1, 8, 32)

SHAPE_FEATURE_NAMES: tuple[str, ...] = (
    "depth",
    *(f"kind_{k}" for k in KINDS),
    "log_in",
    "log_out",
    "log_max_rank",
)
SPECTRUM_FEATURE_NAMES: tuple[str, ...] = (
    "stable_rank_frac",
    "eff_rank_frac",
    *(f"top{k}_energy" for k in _TOP_K),
)
GRADIENT_FEATURE_NAMES: tuple[str, ...] = ("grad_sens_rel", "grad_sens_log", "grad_norm_rel")
#: columns of :attr:`LayerFeatures.static`, in order
STATIC_FEATURE_NAMES: tuple[str, ...] = SHAPE_FEATURE_NAMES + SPECTRUM_FEATURE_NAMES + GRADIENT_FEATURE_NAMES
#: columns :meth:`LayerFeatures.matrix` derives from the targets and the allocation: ``cost_share`` (the module's
#: share of the cost of one rank everywhere, times the number of modules: 1.0 = an even share; every budgeted
#: quantity is a multiple of ``r (in + out)``, so it is the module's share of any cap per unit rank) and
#: ``rank_frac`` (current rank / r_max)
DERIVED_FEATURE_NAMES: tuple[str, ...] = ("cost_share", "rank_frac")
#: columns of :meth:`LayerFeatures.matrix`: the static columns, then the derived ones
FEATURE_NAMES: tuple[str, ...] = STATIC_FEATURE_NAMES + DERIVED_FEATURE_NAMES

#: gradient columns used when no batches are given: every module equally sensitive
NEUTRAL_GRADIENT: tuple[float, float, float] = (1.0, math.log1p(1.0), 1.0)


# eq=False: dataclass equality would compare ndarrays element-wise and raise on ``bool(array)``.
@dataclass(frozen=True, eq=False)
class LayerFeatures:
    """Static feature rows of a model's adapted modules, plus the dynamic rank column on demand.

    Attributes:
        targets: the adapted modules, one per row, in row order.
        static: ``(len(targets), len(STATIC_FEATURE_NAMES))`` float32 matrix (read-only).
    """

    targets: tuple[TargetModule, ...]
    static: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        static = np.array(self.static, dtype=np.float32)  # a private copy, so freezing it is safe
        expected = (len(self.targets), len(STATIC_FEATURE_NAMES))
        if static.shape != expected:
            raise ValueError(f"static features have shape {static.shape}, expected {expected}")
        if not np.isfinite(static).all():
            raise ValueError("static features must be finite")
        static.setflags(write=False)
        object.__setattr__(self, "static", static)

    @property
    def names(self) -> tuple[str, ...]:
        """Module names, in row order."""
        return tuple(t.name for t in self.targets)

    def matrix(self, ranks: Mapping[str, int] | None = None, r_max: int | None = None) -> np.ndarray:
        """Full feature matrix with the ``cost_share`` and ``rank_frac`` columns appended.

        Args:
            ranks: current rank of every module, keyed by module name; ``None`` gives ``rank_frac`` 0.
            r_max: the allocation's maximal rank (``rank_frac = rank / r_max``); required with ``ranks``.

        Returns:
            ``(len(targets), len(FEATURE_NAMES))`` float32 matrix.

        Raises:
            ValueError: when ``ranks`` misses a module, names an unknown one, or a rank lies outside
                ``[0, r_max]``.
        """
        rank_frac = np.zeros((len(self.targets), 1), dtype=np.float32)
        if ranks is not None:
            if r_max is None or r_max < 1:
                raise ValueError(f"r_max must be a positive int when ranks are given, got {r_max!r}")
            names = self.names
            if missing := sorted(set(names) - set(ranks)):
                raise ValueError(f"ranks missing for modules {missing}")
            if unknown := sorted(set(ranks) - set(names)):
                raise ValueError(f"ranks given for unknown modules {unknown}")
            for i, name in enumerate(names):
                if not 0 <= ranks[name] <= r_max:
                    raise ValueError(f"rank {ranks[name]} of {name} outside [0, {r_max}]")
                rank_frac[i, 0] = ranks[name] / r_max
        width = np.array([t.in_features + t.out_features for t in self.targets], dtype=np.float64)
        cost_share = (width / width.mean()).astype(np.float32).reshape(-1, 1) if len(width) else rank_frac
        return np.concatenate([self.static, cost_share, rank_frac], axis=1)


def base_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The base (pre-LoRA) weight of module ``name``, also when the model is already wrapped by PEFT."""
    try:
        module = model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"target module {name!r} not found in {type(model).__name__}") from err
    module = getattr(module, "base_layer", module)  # PEFT's LoraLayer wraps the frozen projection
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError(f"module {name!r} has no 2-D weight")
    return weight


def shape_features(targets: Sequence[TargetModule]) -> np.ndarray:
    """Depth, one-hot kind and log-scaled widths: ``(n, len(SHAPE_FEATURE_NAMES))`` float32."""
    rows = []
    for t in targets:
        one_hot = [float(t.kind == k) for k in KINDS]
        logs = [math.log2(v) / _LOG_SCALE for v in (t.in_features, t.out_features, t.max_rank)]
        rows.append([t.depth, *one_hot, *logs])
    return np.asarray(rows, dtype=np.float32).reshape(len(targets), len(SHAPE_FEATURE_NAMES))


@torch.no_grad()
def spectrum_features(model: nn.Module, targets: Sequence[TargetModule]) -> np.ndarray:
    """Singular-value statistics of every target's base weight.

    Columns (:data:`SPECTRUM_FEATURE_NAMES`): stable rank ``||W||_F^2 / sigma_max^2`` and the entropy
    effective rank ``exp(H(s / sum s))`` (Roy & Vetterli, 2007), both divided by the module's max rank, and
    the share of ``||W||_F^2`` held by the top 1/8/32 singular directions. A zero weight gives all zeros.
    GPT-2's transposed Conv1D weight needs no special case: singular values ignore transposition.

    Returns:
        ``(n, len(SPECTRUM_FEATURE_NAMES))`` float32.
    """
    out = np.zeros((len(targets), len(SPECTRUM_FEATURE_NAMES)), dtype=np.float32)
    for i, t in enumerate(targets):
        s = torch.linalg.svdvals(base_weight(model, t.name).detach().float()).double().cpu()
        energy = s.square()
        total = float(energy.sum())
        if not total > 0:
            continue
        p = s / s.sum()
        entropy = -float((p[p > 0] * p[p > 0].log()).sum())
        cum = energy.cumsum(0) / total
        top = [float(cum[min(k, len(cum)) - 1]) for k in _TOP_K]
        out[i] = [total / float(energy[0]) / t.max_rank, math.exp(entropy) / t.max_rank, *top]
    return out


def gradient_sensitivity(
    model: nn.Module,
    targets: Sequence[TargetModule],
    batches: Iterable[Mapping[str, Any]],
    max_batches: int = 4,
) -> np.ndarray:
    """Relative first-order sensitivity of every target's base weight, measured on real batches.

    Sensitivity is AdaLoRA's first-order Taylor importance ``mean |W * dL/dW|`` (Zhang et al., 2023),
    averaged over batches; it is divided by its mean over modules so the column does not depend on the loss
    scale, the model or the number of batches. The model is left exactly as found: gradients flow only into
    the target weights (every ``requires_grad`` flag is restored), pre-existing ``.grad`` tensors are put
    back, and each submodule's training flag is restored. Dropout is off (``eval``) while measuring.

    Args:
        model: a Hugging Face model whose output has ``.loss`` when called with a batch.
        targets: modules to measure.
        batches: dicts of tensors including ``labels``; moved to the device of the first target weight.
        max_batches: at most this many batches are used.

    Returns:
        ``(n, 3)`` float32: ``grad_sens_rel``, ``grad_sens_log = log1p(grad_sens_rel)``, ``grad_norm_rel``
        (``||dL/dW||_F`` over its mean across modules).

    Raises:
        ValueError: when ``max_batches < 1``, no batch is given, or the model returns no loss.
    """
    if max_batches < 1:
        raise ValueError(f"max_batches must be >= 1, got {max_batches}")
    weights = [base_weight(model, t.name) for t in targets]
    target_ids = {id(w) for w in weights}
    saved_flags = [(p, p.requires_grad) for p in model.parameters()]
    saved_grads = [(w, w.grad) for w in weights]
    saved_modes = [(m, m.training) for m in model.modules()]
    sens = torch.zeros(len(weights), dtype=torch.float64)
    norms = torch.zeros(len(weights), dtype=torch.float64)
    n_batches = 0
    try:
        # Only the target weights need gradients: cheaper, and no other parameter's .grad is touched.
        for p, _ in saved_flags:
            p.requires_grad_(id(p) in target_ids)
        for w in weights:
            w.grad = None
            w.requires_grad_(True)
        model.eval()
        device = weights[0].device if weights else torch.device("cpu")
        with torch.enable_grad():
            for batch in itertools.islice(batches, max_batches):
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                loss = getattr(model(**inputs), "loss", None)
                if loss is None:
                    raise ValueError("the model returned no loss: batches must include labels")
                loss.backward()
                batch_sens, batch_norms = [], []
                for w in weights:
                    # A weight the loss does not reach has zero gradient, hence zero sensitivity.
                    g = torch.zeros_like(w, dtype=torch.float) if w.grad is None else w.grad.detach().float()
                    batch_sens.append((w.detach().float() * g).abs().mean())
                    batch_norms.append(torch.linalg.vector_norm(g))
                    w.grad = None
                if weights:  # one device sync per batch, not per module
                    sens += torch.stack(batch_sens).double().cpu()
                    norms += torch.stack(batch_norms).double().cpu()
                n_batches += 1
    finally:
        for w, g in saved_grads:
            w.grad = g
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        for m, mode in saved_modes:
            m.training = mode
    if n_batches == 0:
        raise ValueError("gradient_sensitivity needs at least one batch")
    if not (torch.isfinite(sens).all() and torch.isfinite(norms).all()):
        # NaN features used to become the neutral columns: a diverged measurement posing as "all equally sensitive"
        finite = (torch.isfinite(sens) & torch.isfinite(norms)).tolist()
        bad = [t.name for t, ok in zip(targets, finite, strict=True) if not ok]
        raise ValueError(f"gradient sensitivity is not finite for {len(bad)} module(s) (e.g. {bad[0]}): the loss or "
                         "gradients on the feature batches are NaN/inf. Check the model and task (a smaller --lr if "
                         "the model was trained), or use --task none for neutral gradient columns")  # fmt: skip
    sens_rel = _relative(sens.numpy())
    return np.stack([sens_rel, np.log1p(sens_rel), _relative(norms.numpy())], axis=1).astype(np.float32)


def compute_features(
    model: nn.Module,
    targets: Sequence[TargetModule] | None = None,
    batches: Iterable[Mapping[str, Any]] | None = None,
    *,
    max_batches: int = 4,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_key: str | None = None,
) -> LayerFeatures:
    """Static feature rows (shape, spectrum, gradient sensitivity) for every target module.

    Args:
        model: the (possibly PEFT-wrapped) model.
        targets: modules to describe; ``None`` auto-detects them with :func:`find_target_modules`.
        batches: real batches with labels for the gradient columns; ``None`` fills those columns with the
            neutral :data:`NEUTRAL_GRADIENT` (1.0, log1p(1), 1.0), i.e. "every module equally sensitive".
        max_batches: at most this many batches are used.
        cache_dir: folder for an ``.npz`` cache; used only together with ``cache_key``.
        cache_key: identifies model, data and batch count, e.g. ``f"{model_id}|{task_id}|{n_batches}"``.
            The file name hashes the key and the target names; a cached file whose stored target or feature
            names differ from the current ones is ignored and overwritten. A cache hit never runs the model.

    Returns:
        The features; :meth:`LayerFeatures.matrix` appends the rank column.

    Raises:
        ValueError: when only one of ``cache_dir`` / ``cache_key`` is given.
    """
    if (cache_dir is None) != (cache_key is None):
        raise ValueError("cache_dir and cache_key must be given together")
    targets = tuple(find_target_modules(model) if targets is None else targets)
    names = [t.name for t in targets]
    path = None
    if cache_dir is not None and cache_key is not None:
        digest = hashlib.sha1("\n".join([cache_key, *names]).encode()).hexdigest()
        path = Path(cache_dir) / f"features-{digest}.npz"
        cached = _load_cache(path, names)
        if cached is not None:
            return LayerFeatures(targets, cached)
    if batches is None:
        grads = np.tile(np.asarray(NEUTRAL_GRADIENT, dtype=np.float32), (len(targets), 1))
    else:
        grads = gradient_sensitivity(model, targets, batches, max_batches=max_batches)
    static = np.concatenate([shape_features(targets), spectrum_features(model, targets), grads], axis=1)
    features = LayerFeatures(targets, static)
    if path is not None:
        _save_cache(path, names, features.static, cache_key or "")
    return features


def _relative(x: np.ndarray) -> np.ndarray:
    """``x / mean(x)``; all ones when the mean is zero or not finite (no information: neutral)."""
    mean = float(x.mean()) if x.size else 0.0
    if not (mean > 0 and math.isfinite(mean)):
        return np.ones_like(x)
    return x / mean


def _load_cache(path: Path, names: list[str]) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            stored_names = data["target_names"].tolist()
            stored_columns = data["feature_names"].tolist()
            static = np.array(data["static"], dtype=np.float32)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):  # missing or unreadable: recompute
        return None
    # The hash already covers the names; checking them again guards against collisions and stale columns.
    if stored_names != names or stored_columns != list(STATIC_FEATURE_NAMES):
        return None
    if static.shape != (len(names), len(STATIC_FEATURE_NAMES)) or not np.isfinite(static).all():
        return None
    return static


def _save_cache(path: Path, names: list[str], static: np.ndarray, key: str) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(
                f,
                static=static,
                target_names=np.asarray(names, dtype=str),
                feature_names=np.asarray(STATIC_FEATURE_NAMES, dtype=str),
                key=np.asarray(key, dtype=str),
            )

    atomic_write(path, write)

"""Cost model of a LoRA rank allocation: parameters, FLOPs, memory and transmission, per module and in total.

A *rank allocation* maps every :class:`~rankrl.targets.TargetModule` name to a rank (0 switches the module
off). For a module with ``in`` input and ``out`` output features at rank ``r`` (``A`` is ``r x in``, ``B``
is ``out x r``) the conventions are:

* **Trainable parameters**: ``r * (in + out)``.
* **FLOPs per token**, adapter path only (the frozen base weight is the same for every allocation, so it is
  left out): forward ``2*r*in + 2*r*out`` for the two matmuls ``x @ A^T`` and ``h @ B^T``, counting a
  multiply-add as 2 FLOPs; backward ``2 x`` forward (one matmul for the gradient w.r.t. the activations and
  one for the gradient w.r.t. the weights, the usual 2:1 rule of Kaplan et al. 2020); total ``3 x`` forward.
* **Optimizer state**: fp32 states per trainable parameter, 8 bytes for AdamW (two moments), 4 for SGD with
  momentum, 0 for plain SGD. **Gradients** are reported separately at 4 bytes (fp32) per parameter.
* **Bits to transmit** an adapter update: ``params * precision_bits`` plus an optional fixed header per module
  that is switched on (a rank-0 module sends nothing).

Transmission time over a wireless link (AirLLM-style remote fine-tuning) comes from :class:`Channel`, the
Shannon capacity ``B log2(1 + SNR * g)`` with ``g = |h|^2`` either 1 (no fading) or Exponential(1) (Rayleigh).

This module is pure Python + numpy so that budgets can be computed without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # rankrl.targets imports torch; only its row type is needed here
    from rankrl.targets import TargetModule

#: fp32 optimizer-state bytes kept per trainable parameter, by optimizer name
OPTIMIZER_STATE_BYTES: dict[str, int] = {"adamw": 8, "sgd": 0, "sgd_momentum": 4}
#: fp32 gradient bytes per trainable parameter
GRADIENT_BYTES_PER_PARAM = 4
#: precisions an adapter update may be sent at, in bits per parameter
PRECISION_BITS: tuple[int, ...] = (32, 16, 8, 4)


@dataclass(frozen=True)
class Channel:
    """A wireless link between the device that fine-tunes and the one that receives the adapter.

    Attributes:
        bandwidth_hz: channel bandwidth in Hz (> 0).
        snr_db: average signal-to-noise ratio in dB (finite).
        rayleigh: draw a Rayleigh fading power gain ``|h|^2 ~ Exponential(1)`` on every capacity query.
    """

    bandwidth_hz: float
    snr_db: float
    rayleigh: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bandwidth_hz) and self.bandwidth_hz > 0):
            raise ValueError(f"bandwidth_hz must be a finite number > 0, got {self.bandwidth_hz}")
        if not math.isfinite(self.snr_db):
            raise ValueError(f"snr_db must be finite, got {self.snr_db}")

    @property
    def snr_linear(self) -> float:
        """Average SNR as a power ratio."""
        return 10.0 ** (self.snr_db / 10.0)

    def capacity_bps(self, rng: np.random.Generator | None = None) -> float:
        """Shannon capacity ``bandwidth * log2(1 + snr * g)`` in bits per second.

        Args:
            rng: source of the fading draw; required when ``rayleigh`` is set, ignored otherwise.

        Raises:
            ValueError: when ``rayleigh`` is set and no ``rng`` is given.
        """
        gain = 1.0
        if self.rayleigh:
            if rng is None:
                # an implicit global RNG would make episode costs irreproducible
                raise ValueError("a Rayleigh channel needs a generator: pass rng=np.random.default_rng(seed)")
            gain = float(rng.exponential(1.0))
        return self.bandwidth_hz * math.log2(1.0 + self.snr_linear * gain)

    def transmit_seconds(self, bits: float, rng: np.random.Generator | None = None) -> float:
        """Seconds to send ``bits`` at the (possibly faded) capacity.

        Args:
            bits: payload size in bits (>= 0).
            rng: see :meth:`capacity_bps`.

        Raises:
            ValueError: on negative ``bits`` or a Rayleigh channel without ``rng``.
        """
        if bits < 0:
            raise ValueError(f"bits must be >= 0, got {bits}")
        capacity = self.capacity_bps(rng)
        return bits / capacity if bits else 0.0


@dataclass(frozen=True)
class ModuleCost:
    """Cost of one module's adapter at its allocated rank.

    Attributes:
        name: module name (``TargetModule.name``).
        rank: allocated rank (0 = off).
        params: trainable adapter parameters.
        flops_forward: forward FLOPs per token.
        flops_backward: backward FLOPs per token.
        optimizer_bytes: optimizer-state bytes.
        gradient_bytes: fp32 gradient bytes.
        bits: bits to transmit the adapter update, header included.
    """

    name: str
    rank: int
    params: int
    flops_forward: int
    flops_backward: int
    optimizer_bytes: int
    gradient_bytes: int
    bits: int

    @property
    def flops(self) -> int:
        """Forward + backward FLOPs per token."""
        return self.flops_forward + self.flops_backward


@dataclass(frozen=True)
class AllocationCost:
    """Cost of a whole rank allocation, one :class:`ModuleCost` per target in target order.

    Attributes:
        modules: per-module costs.
    """

    modules: tuple[ModuleCost, ...]

    @property
    def params(self) -> int:
        """Total trainable adapter parameters."""
        return sum(m.params for m in self.modules)

    @property
    def flops_forward(self) -> int:
        """Total forward FLOPs per token."""
        return sum(m.flops_forward for m in self.modules)

    @property
    def flops_backward(self) -> int:
        """Total backward FLOPs per token."""
        return sum(m.flops_backward for m in self.modules)

    @property
    def flops(self) -> int:
        """Total forward + backward FLOPs per token."""
        return self.flops_forward + self.flops_backward

    @property
    def optimizer_bytes(self) -> int:
        """Total optimizer-state bytes."""
        return sum(m.optimizer_bytes for m in self.modules)

    @property
    def gradient_bytes(self) -> int:
        """Total fp32 gradient bytes."""
        return sum(m.gradient_bytes for m in self.modules)

    @property
    def bits(self) -> int:
        """Total bits to transmit the adapter update."""
        return sum(m.bits for m in self.modules)

    @property
    def active_modules(self) -> int:
        """Number of modules with rank > 0."""
        return sum(1 for m in self.modules if m.rank > 0)

    def transmit_seconds(self, channel: Channel, rng: np.random.Generator | None = None) -> float:
        """Seconds to send the whole update over ``channel`` (one fading draw for the whole payload)."""
        return channel.transmit_seconds(self.bits, rng)

    def as_metrics(self, prefix: str = "cost/") -> dict[str, float]:
        """Totals as a flat metrics dict (``cost/params``, ``cost/flops``, ... and ``rank/total_params``).

        Args:
            prefix: namespace of the cost keys; ``rank/total_params`` always keeps its own namespace.
        """
        metrics = {
            "params": self.params,
            "flops": self.flops,
            "flops_forward": self.flops_forward,
            "flops_backward": self.flops_backward,
            "optimizer_bytes": self.optimizer_bytes,
            "gradient_bytes": self.gradient_bytes,
            "bits": self.bits,
            "active_modules": self.active_modules,
        }
        out = {prefix + key: float(value) for key, value in metrics.items()}
        out["rank/total_params"] = float(self.params)
        return out


def allocation_cost(
    targets: Sequence[TargetModule],
    ranks: Mapping[str, int],
    *,
    precision_bits: int = 32,
    optimizer: str = "adamw",
    header_bits: int = 0,
) -> AllocationCost:
    """Cost of giving each target module the rank ``ranks[name]``.

    Args:
        targets: the adaptable modules (see :func:`rankrl.targets.find_target_modules`).
        ranks: a rank for every target name; 0 switches a module off.
        precision_bits: bits per transmitted parameter, one of :data:`PRECISION_BITS`.
        optimizer: ``"adamw"``, ``"sgd"`` or ``"sgd_momentum"``.
        header_bits: fixed per-module header added to the payload of every module with rank > 0.

    Returns:
        Per-module and total costs, modules in the order of ``targets``.

    Raises:
        ValueError: on an unknown optimizer or precision, a negative header, duplicate target names, a rank
            key that is not a target, a target without a rank, or a rank outside ``[0, max_rank]``.
        TypeError: on a non-integer rank.

    >>> from types import SimpleNamespace as Row
    >>> t = [Row(name="q", in_features=64, out_features=128, max_rank=64)]
    >>> allocation_cost(t, {"q": 4}, precision_bits=16).bits
    12288
    """
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose from {sorted(OPTIMIZER_STATE_BYTES)}")
    if precision_bits not in PRECISION_BITS:
        raise ValueError(f"precision_bits must be one of {list(PRECISION_BITS)}, got {precision_bits}")
    if header_bits < 0:
        raise ValueError(f"header_bits must be >= 0, got {header_bits}")
    by_name = _index_targets(targets)
    if unknown := [key for key in ranks if key not in by_name]:
        raise ValueError(
            f"ranks has keys that are not target modules: {unknown[:3]}; valid names include "
            f"{list(by_name)[:3]}"
        )
    state_bytes = OPTIMIZER_STATE_BYTES[optimizer]
    modules = []
    for target in targets:
        if target.name not in ranks:
            raise ValueError(
                f"ranks has no entry for {target.name}; give every target a rank (0 switches it off)"
            )
        r = _check_rank(target, ranks[target.name])
        params = r * (target.in_features + target.out_features)
        forward = 2 * r * target.in_features + 2 * r * target.out_features
        modules.append(
            ModuleCost(
                name=target.name,
                rank=r,
                params=params,
                flops_forward=forward,
                flops_backward=2 * forward,
                optimizer_bytes=params * state_bytes,
                gradient_bytes=params * GRADIENT_BYTES_PER_PARAM,
                bits=params * precision_bits + (header_bits if r > 0 else 0),
            )
        )
    return AllocationCost(tuple(modules))


def uniform_ranks(targets: Sequence[TargetModule], r: int) -> dict[str, int]:
    """The allocation that gives every target rank ``r``.

    Raises:
        ValueError: when ``r`` is negative or above some target's ``max_rank``.
    """
    return {t.name: _check_rank(t, r) for t in targets}


def params_for_uniform(targets: Sequence[TargetModule], r: int) -> int:
    """Trainable parameters of a uniform rank-``r`` allocation (a handy unit for parameter budgets)."""
    return allocation_cost(targets, uniform_ranks(targets, r)).params


def flops_training_step(cost: AllocationCost, tokens: int) -> int:
    """Adapter FLOPs (forward + backward) of one training step over ``tokens`` tokens."""
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    return cost.flops * tokens


def _index_targets(targets: Sequence[TargetModule]) -> dict[str, TargetModule]:
    by_name: dict[str, TargetModule] = {}
    for t in targets:
        if t.name in by_name:
            raise ValueError(f"duplicate target module name {t.name}; target names must be unique")
        by_name[t.name] = t
    return by_name


def _check_rank(target: TargetModule, r: object) -> int:
    # numpy integers come straight out of MultiDiscrete actions; bools are Integral too but never meant
    if isinstance(r, bool) or not isinstance(r, Integral):
        raise TypeError(f"rank for {target.name} must be an integer, got {r!r} ({type(r).__name__})")
    r = int(r)
    if r < 0:
        raise ValueError(f"rank for {target.name} is {r}; ranks must be >= 0 (0 switches a module off)")
    if r > target.max_rank:
        raise ValueError(
            f"rank {r} for {target.name} exceeds its max_rank {target.max_rank} "
            f"(= min(in_features={target.in_features}, out_features={target.out_features})); lower it"
        )
    return r

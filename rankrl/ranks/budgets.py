"""The feasible set of LoRA rank allocations: a :class:`BudgetSpec` resolved to a :class:`Budget` (caps), costs and
feasibility checks; the rounding onto it lives in :mod:`rankrl.ranks.rounding`.

Every rank policy (closed-form baselines, PPO, the diffusion refiner) proposes ranks; the rank environment
enforces the budget by *projecting* the proposal onto the feasible set (ARCHITECTURE.md: "budgets are
enforced by projecting the action onto the feasible set, not only by penalties") and logs what the raw
proposal would have violated as ``budget/violation``.

Linearity. With :mod:`rankrl.ranks.costs`' conventions every constrained quantity of a module is linear in its rank:
params ``r (in + out)``, FLOPs ``6 r (in + out)``, optimizer bytes ``8 r (in + out)`` for AdamW, bits
``precision_bits * params`` (no per-module header: a header makes bits non-linear, so budgets leave it out)
and transmit seconds ``bits / capacity``. :func:`unit_costs` therefore asks :func:`~rankrl.ranks.costs.allocation_cost`
for the cost of rank 1 once and scales it, instead of restating any formula here. Every constraint is in
fact a multiple of ``r (in + out)``, so the tightest cap is the only binding one and the problems below are
single-constraint knapsacks.

Greedy allocation (:mod:`rankrl.ranks.rounding`). :func:`~rankrl.ranks.rounding.allocate_by_scores` maximises
``sum_i s_i * g(r_i)`` over ranks on a grid, with a concave utility ``g`` (``log1p`` by default: at the continuous
optimum ``1 + r_i`` is proportional to ``s_i / cost_i``, i.e. rank follows score per unit cost). Because ``g`` is
concave and costs are linear in r, each module's grid steps have non-increasing gain per unit cost, so taking steps
in order of that ratio, skipping any that no longer fit (and the module's later steps), is the textbook greedy for a
separable concave knapsack. It solves the continuous relaxation exactly except for the first step that did not fit,
hence ``OPT - greedy <= the largest single-step gain`` (tested against brute force); it is often exactly optimal.
Ties go to the lower grid step, then to the earlier module in target order (deterministic, and round-robin among
equals). :func:`~rankrl.ranks.rounding.project` is the same greedy with each module capped at its desired rank,
which is the same as lowering, one grid step at a time, the module that loses the least value per unit of cost saved
until the allocation fits, then refilling what fits again. """

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from rankrl.ranks.costs import OPTIMIZER_STATE_BYTES, PRECISION_BITS, Channel, allocation_cost

if TYPE_CHECKING:  # rankrl.targets imports torch; only its row type is needed here
    from rankrl.targets import TargetModule

__all__ = [
    "CONSTRAINTS",
    "RTOL",
    "Budget",
    "BudgetSpec",
    "budget_metrics",
    "check_grid",
    "feasible",
    "pow2_grid",
    "total_costs",
    "unit_costs",
    "violations",
]

#: constraint names, in the order used by :func:`unit_costs` and :func:`violations`
CONSTRAINTS: tuple[str, ...] = ("params", "flops", "bits", "optimizer_bytes", "tx_seconds")
#: float slack of a comparison against a cap: integer costs are exact in float64, transmit seconds are not
RTOL = 1e-9


class BudgetError(ValueError):
    """A budget no method can use (e.g. below uniform LoRA at the lowest rank): the CLI prints it and exits 2."""


@dataclass(frozen=True)
class Budget:
    """Caps on the cost of a rank allocation; ``None`` leaves a quantity unconstrained.

    Attributes:
        max_params: most trainable adapter parameters (``sum_i r_i (in_i + out_i)``).
        max_flops: most adapter FLOPs per token, forward + backward (:mod:`rankrl.ranks.costs` convention).
        max_bits: most bits to send one adapter update at ``precision_bits`` per parameter.
        max_optimizer_bytes: most optimizer-state bytes for ``optimizer``.
        precision_bits: bits per transmitted parameter, one of :data:`rankrl.ranks.costs.PRECISION_BITS`.
        max_tx_seconds: most seconds to send one update over ``channel`` (needs ``channel``).
        channel: the link for ``max_tx_seconds``, at its average-SNR capacity (fading ignored, see below).
        optimizer: optimizer whose state ``max_optimizer_bytes`` counts (``adamw``, ``sgd``, ``sgd_momentum``).

    A Rayleigh channel's capacity is random; the feasible set uses the fading-free capacity so that it does not
    change from one draw to the next (the env can still report faded ``cost/tx_seconds``).
    """

    max_params: int | None = None
    max_flops: float | None = None
    max_bits: float | None = None
    max_optimizer_bytes: int | None = None
    precision_bits: int = 32
    max_tx_seconds: float | None = None
    channel: Channel | None = None
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        for name in ("max_params", "max_optimizer_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, Integral)):
                raise TypeError(f"{name} must be an integer or None, got {value!r}")
        for name in ("max_params", "max_flops", "max_bits", "max_optimizer_bytes", "max_tx_seconds"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value > 0):
                # a zero cap admits only the all-zero allocation: set the ranks to 0 instead of budgeting
                raise ValueError(f"{name} must be a finite number > 0 or None, got {value!r}")
        if self.precision_bits not in PRECISION_BITS:
            raise ValueError(f"precision_bits must be one of {list(PRECISION_BITS)}, got {self.precision_bits}")
        if self.optimizer not in OPTIMIZER_STATE_BYTES:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {sorted(OPTIMIZER_STATE_BYTES)}")
        if self.channel is not None and not isinstance(self.channel, Channel):
            raise TypeError(f"channel must be a rankrl.ranks.costs.Channel, got {type(self.channel).__name__}")
        if self.max_tx_seconds is not None and self.channel is None:
            raise ValueError("max_tx_seconds needs a channel: pass channel=Channel(bandwidth_hz, snr_db)")

    @property
    def caps(self) -> dict[str, float]:
        """The active caps, by constraint name (a subset of :data:`CONSTRAINTS`, in that order)."""
        values = (self.max_params, self.max_flops, self.max_bits, self.max_optimizer_bytes, self.max_tx_seconds)
        return {name: float(v) for name, v in zip(CONSTRAINTS, values, strict=True) if v is not None}

    def scaled(self, fraction: float) -> Budget:
        """The same budget with every cap times ``fraction`` in (0, 1] (integer caps floored, at least 1): what a
        policy that chose to spend only part of its budget is allocated under.

        >>> Budget(max_params=1000, max_flops=10.0).scaled(0.25).caps
        {'params': 250.0, 'flops': 2.5}

        Raises:
            ValueError: when ``fraction`` is not in (0, 1].
        """
        if not (isinstance(fraction, Real) and math.isfinite(fraction) and 0 < fraction <= 1):
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if fraction == 1:
            return self

        def cut(v: float | None, integer: bool) -> float | None:
            if v is None:
                return None
            return max(1, math.floor(v * fraction + 1e-9)) if integer else v * fraction

        return dataclasses.replace(self, max_params=cut(self.max_params, True), max_flops=cut(self.max_flops, False),
                       max_bits=cut(self.max_bits, False), max_optimizer_bytes=cut(self.max_optimizer_bytes, True),
                       max_tx_seconds=cut(self.max_tx_seconds, False))  # fmt: skip

    @classmethod
    def uniform_equivalent(
        cls,
        targets: Sequence[TargetModule],
        r: int,
        *,
        params: bool = True,
        flops: bool = False,
        bits: bool = False,
        optimizer_bytes: bool = False,
        tx_seconds: bool = False,
        precision_bits: int = 32,
        optimizer: str = "adamw",
        channel: Channel | None = None,
    ) -> Budget:
        """The budget that uniform rank ``r`` exactly exhausts, on the chosen quantities.

        ``Budget.uniform_equivalent(targets, 8)`` caps parameters at those of LoRA with r = 8 everywhere, the
        usual "same parameter count as uniform LoRA" comparison; ``flops=True`` etc. add more caps.

        Raises:
            ValueError: when ``r < 1``, nothing is selected, or ``tx_seconds`` is selected without ``channel``.
        """
        if isinstance(r, bool) or not isinstance(r, Integral) or r < 1:
            raise ValueError(f"r must be an integer >= 1, got {r!r}")
        chosen = {"params": params, "flops": flops, "bits": bits, "optimizer_bytes": optimizer_bytes,
                  "tx_seconds": tx_seconds}  # fmt: skip
        if not any(chosen.values()):
            raise ValueError("choose at least one quantity to cap (params, flops, bits, optimizer_bytes, tx_seconds)")
        if tx_seconds and channel is None:
            raise ValueError("tx_seconds=True needs a channel: pass channel=Channel(bandwidth_hz, snr_db)")
        probe = cls(precision_bits=precision_bits, optimizer=optimizer, channel=channel)
        units = unit_costs(targets, probe, all_constraints=True)
        total = {name: int(r) * float(units[name].sum()) for name in CONSTRAINTS if chosen[name]}
        return cls(
            max_params=int(round(total["params"])) if params else None,
            max_flops=total.get("flops"),
            max_bits=total.get("bits"),
            max_optimizer_bytes=int(round(total["optimizer_bytes"])) if optimizer_bytes else None,
            precision_bits=precision_bits,
            max_tx_seconds=total.get("tx_seconds"),
            channel=channel,
            optimizer=optimizer,
        )

    @classmethod
    def mean_rank(cls, targets: Sequence[TargetModule], r: float) -> Budget:
        """A parameter budget of "average rank ``r``" (AdaLoRA's ``target_r`` notion), ``r`` may be fractional.

        The cap is ``floor(r * sum_i (in_i + out_i))``: the parameters of rank ``r`` everywhere, so a budget
        between two grid ranks can be expressed (e.g. ``r = 6`` on the grid ``(0, 4, 8)``).

        Raises:
            ValueError: when ``r`` is not a finite number > 0 or the cap rounds to 0.
        """
        if isinstance(r, bool) or not isinstance(r, Real) or not (math.isfinite(r) and r > 0):
            raise ValueError(f"r must be a finite number > 0, got {r!r}")
        units = unit_costs(targets, cls(max_params=1))["params"]
        cap = math.floor(float(r) * float(units.sum()) + 1e-9)
        if cap < 1:
            raise ValueError(f"mean rank {r} gives a parameter cap of 0; raise r")
        return cls(max_params=cap)


@dataclass(frozen=True)
class BudgetSpec:
    """A LoRA budget as a user states it; the one place that turns every way of stating it into caps.

    The parameter cap is given either as a mean rank (``rank``) or absolutely (``params``); when both are set
    ``params`` wins. ``None`` leaves a quantity uncapped (in :meth:`merged`: "keep the base's"). Nested in a
    config as ``budget`` it gives the flags ``--budget.rank``, ``--budget.params``, ``--budget.flops``,
    ``--budget.tx_seconds``. Policy files store it under the keys of :data:`META_KEYS`.
    """

    rank: float | None = 4.0
    """parameter cap as a mean rank: the parameters of LoRA at this rank on every module (None: no such cap)"""
    params: int | None = None
    """absolute parameter cap; when set it replaces the mean-rank cap"""
    flops: float | None = None
    """cap on adapter FLOPs per token, forward + backward (None: no cap)"""
    tx_seconds: float | None = None
    """cap on seconds to send one update at the round's average (fading-free) capacity (None: no cap)"""

    #: field -> key in policy files and env keywords (the names rankrl has always stored)
    META_KEYS: ClassVar[dict[str, str]] = {"rank": "budget_rank", "params": "max_params", "flops": "max_flops",
                                           "tx_seconds": "max_tx_seconds"}  # fmt: skip

    def __post_init__(self) -> None:
        for name in self.META_KEYS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, Real)
                                      or not (math.isfinite(value) and value > 0)):  # fmt: skip
                raise ValueError(f"--budget.{name} must be a finite number > 0 (or None), got {value!r}")
        if self.params is not None and not isinstance(self.params, Integral):
            raise ValueError(f"--budget.params must be an integer, got {self.params!r}")

    @property
    def is_set(self) -> bool:
        """Whether any cap is given."""
        return any(getattr(self, name) is not None for name in self.META_KEYS)

    def to_meta(self) -> dict[str, float | None]:
        """``{"budget_rank": ..., "max_params": ..., "max_flops": ..., "max_tx_seconds": ...}``."""
        return {key: getattr(self, name) for name, key in self.META_KEYS.items()}

    @classmethod
    def from_meta(cls, meta: Mapping[str, float | None]) -> BudgetSpec:
        """The spec of a :meth:`to_meta` dict (missing keys: uncapped); unknown keys raise."""
        names = {key: name for name, key in cls.META_KEYS.items()}
        if unknown := sorted(set(meta) - set(names)):
            raise ValueError(f"unknown budget keys {unknown}; valid: {sorted(names)}")
        return cls(**{name: meta.get(key) for key, name in names.items()})

    def param_cap(self, targets: Sequence[TargetModule]) -> int | None:
        """The parameter cap on ``targets``: ``params``, else the parameters of rank ``rank`` on every module
        (:meth:`Budget.mean_rank`), else None."""
        if self.params is not None:
            return int(self.params)
        return Budget.mean_rank(targets, self.rank).max_params if self.rank is not None else None

    def merged(self, override: BudgetSpec) -> BudgetSpec:
        """This spec with every cap ``override`` sets replacing ours; a parameter cap in ``override`` (either
        spelling) replaces both of ours, so a user's ``--budget.rank`` beats a stored ``params``."""
        values = {name: getattr(self, name) for name in self.META_KEYS}
        if override.rank is not None or override.params is not None:
            values.update(rank=override.rank, params=override.params)
        for name in ("flops", "tx_seconds"):
            if getattr(override, name) is not None:
                values[name] = getattr(override, name)
        return BudgetSpec(**values)

    def resolve(self, targets: Sequence[TargetModule], channel: Channel | None = None,
                precision_bits: int = 32) -> Budget:  # fmt: skip
        """The :class:`Budget` (caps) of this spec on ``targets``; ``channel`` (the round's link) is needed when
        ``tx_seconds`` is set."""
        if self.tx_seconds is not None and channel is None:
            raise ValueError("a transmit-time cap needs the round's channel to resolve")
        tx = self.tx_seconds is not None
        return Budget(max_params=self.param_cap(targets), max_flops=self.flops, max_tx_seconds=self.tx_seconds,
                      channel=channel if tx else None, precision_bits=precision_bits)  # fmt: skip


# ------------------------------------------------------------------------------------------------ costs
def unit_costs(
    targets: Sequence[TargetModule], budget: Budget, *, all_constraints: bool = False
) -> dict[str, np.ndarray]:
    """Cost of one rank unit per module (costs are linear in rank), one array per constraint, target order.

    Args:
        targets: the adaptable modules.
        budget: supplies ``precision_bits``, ``optimizer`` and ``channel``.
        all_constraints: every constraint of :data:`CONSTRAINTS` (``tx_seconds`` only with a channel) instead
            of only the budget's active ones.
    """
    names = [t.name for t in targets]
    if not names:
        raise ValueError("targets is empty; pass the adaptable modules (rankrl.targets.find_target_modules)")
    cost = allocation_cost(
        targets, dict.fromkeys(names, 1), precision_bits=budget.precision_bits, optimizer=budget.optimizer
    )
    units = {
        "params": np.array([m.params for m in cost.modules], dtype=np.float64),
        "flops": np.array([m.flops for m in cost.modules], dtype=np.float64),
        "bits": np.array([m.bits for m in cost.modules], dtype=np.float64),
        "optimizer_bytes": np.array([m.optimizer_bytes for m in cost.modules], dtype=np.float64),
    }
    if budget.channel is not None:
        capacity = dataclasses.replace(budget.channel, rayleigh=False).capacity_bps()
        units["tx_seconds"] = units["bits"] / capacity
    keep = CONSTRAINTS if all_constraints else tuple(budget.caps)
    return {name: units[name] for name in keep if name in units}


def total_costs(targets: Sequence[TargetModule], ranks: Mapping[str, int], budget: Budget) -> dict[str, float]:
    """Totals of the budget's constrained quantities for ``ranks`` (validated by :func:`allocation_cost`)."""
    cost = allocation_cost(targets, ranks, precision_bits=budget.precision_bits, optimizer=budget.optimizer)
    out = {"params": float(cost.params), "flops": float(cost.flops), "bits": float(cost.bits),
           "optimizer_bytes": float(cost.optimizer_bytes)}  # fmt: skip
    if budget.channel is not None:
        out["tx_seconds"] = cost.bits / dataclasses.replace(budget.channel, rayleigh=False).capacity_bps()
    return {name: out[name] for name in budget.caps}


def violations(targets: Sequence[TargetModule], ranks: Mapping[str, int], budget: Budget) -> dict[str, float]:
    """Relative excess ``(cost - cap) / cap`` per active constraint, 0 where the cap is met.

    >>> from types import SimpleNamespace as Row
    >>> t = [Row(name="q", in_features=64, out_features=64, max_rank=64)]
    >>> violations(t, {"q": 6}, Budget(max_params=512))
    {'params': 0.5}
    """
    totals = total_costs(targets, ranks, budget)
    out = {}
    for name, cap in budget.caps.items():
        excess = (totals[name] - cap) / cap
        out[name] = excess if excess > RTOL else 0.0
    return out


def feasible(targets: Sequence[TargetModule], ranks: Mapping[str, int], budget: Budget) -> bool:
    """Whether ``ranks`` meets every cap of ``budget``."""
    return not any(violations(targets, ranks, budget).values())


def budget_metrics(
    targets: Sequence[TargetModule], ranks: Mapping[str, int], budget: Budget, prefix: str = "budget/"
) -> dict[str, float]:
    """``budget/violation`` (the largest relative excess, 0 when feasible), plus per constraint
    ``budget/violation_<name>`` and ``budget/used_<name>`` (cost / cap)."""
    totals = total_costs(targets, ranks, budget)
    excess = violations(targets, ranks, budget)
    metrics = {prefix + "violation": max(excess.values(), default=0.0)}
    for name, cap in budget.caps.items():
        metrics[f"{prefix}violation_{name}"] = excess[name]
        metrics[f"{prefix}used_{name}"] = totals[name] / cap
    return metrics


# ------------------------------------------------------------------------------------------------- grid
def pow2_grid(r_max: int) -> tuple[int, ...]:
    """``(0, 1, 2, 4, ..., r_max)``: powers of two up to ``r_max`` (``r_max`` itself always included)."""
    if isinstance(r_max, bool) or not isinstance(r_max, Integral) or r_max < 1:
        raise ValueError(f"r_max must be an integer >= 1, got {r_max!r}")
    out = [0]
    r = 1
    while r < r_max:
        out.append(r)
        r *= 2
    return (*out, int(r_max))


def check_grid(targets: Sequence[TargetModule], grid: Sequence[int], r_max: int | None = None) -> tuple[int, ...]:
    """Validate a rank grid for ``targets``; returns it sorted without duplicates.

    Raises:
        ValueError: empty grid, a negative rank, a rank above ``r_max`` or above some module's
            ``min(in, out)``.
        TypeError: a non-integer rank.
    """
    values = list(grid)
    if not values:
        raise ValueError("the rank grid is empty; give at least one rank, e.g. grid=(0, 1, 2, 4, 8, 16)")
    for g in values:
        if isinstance(g, bool) or not isinstance(g, Integral):
            raise TypeError(f"grid ranks must be integers, got {g!r} ({type(g).__name__})")
        if g < 0:
            raise ValueError(f"grid rank {g} is negative; ranks must be >= 0 (0 switches a module off)")
    top = max(int(g) for g in values)
    if r_max is not None and top > r_max:
        raise ValueError(f"grid rank {top} exceeds r_max={r_max}; drop it or raise r_max")
    if not targets:
        raise ValueError("targets is empty; pass the adaptable modules (rankrl.targets.find_target_modules)")
    smallest = min(targets, key=lambda t: t.max_rank)
    if top > smallest.max_rank:
        raise ValueError(f"grid rank {top} exceeds min(in, out)={smallest.max_rank} of module {smallest.name}; drop it")
    return tuple(sorted({int(g) for g in values}))



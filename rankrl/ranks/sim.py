"""Surrogate of a live LoRA fine-tuning run, calibrated from short live probes (the sim backend of LoRARankEnv).

PPO needs thousands of env steps; a live step is real training. The surrogate replaces the run by a learning
curve whose shape is measured on the real (model, task):

    capacity(r) = (mean_i s_i * log1p(r_i) / log1p(r_max)) ** p   (1 at uniform r_max when every s_i = 1)
    du / dtau   = rate0 + rate1 * capacity(r)                      (progress; rate0 is the trained head)
    floor(r)    = L_inf * exp(-floor_decay * capacity(r))          (more capacity, lower reachable loss)
    loss(u, r)  = floor(r) + (L0 - floor(r)) * exp(-u)

``tau`` is *lr-weighted* time: the sum of the learning-rate schedule's factors over the optimizer steps taken
(FineTuneRun decays the rate linearly to 0 at ``steps``), so a curve measured on the first steps of a run
extrapolates to the decayed end; a re-allocation mid-run changes the slope of ``u`` and the floor. ``log1p``
matches the concave rank utility of :mod:`rankrl.ranks.budgets`. Module sensitivities
``s_i ~ grad_sens_rel_i ** gamma * exp(bias_kind(i))`` (mean 1) start from AdaLoRA's first-order sensitivity
measured on real batches (:mod:`rankrl.ranks.features`); ``gamma`` and one bias per projection kind are fitted.
The power ``p`` is 1 by default (capacity linear in how many modules are on: a handful of rank-1 modules reads as ~1%
of the capacity); ``capacity="concave"`` adds a *sparse* probe (1 module in 16 at the lowest non-zero rank) and fits
``p`` in [0.05, 1], so small updates can earn most of the gain when the probes say so (SmolLM2 on the default task:
uniform rank 1 ends below uniform rank 8, and a live policy sending 1/4 of a rank-1-sized update loses only 2 accuracy
points, while the linear sim put it 23 points lower).

:func:`calibrate` runs ``n_probes`` live probes (uniform at the grid's top and lowest non-zero rank, each kind
alone, then random allocations), each for ``probe_steps`` steps of the real schedule, and fits
``(L_inf / L0, rate0, rate1, floor_decay, gamma, biases)`` by bounded least squares
(``scipy.optimize.least_squares``) with Gaussian priors (MAP): short probes cannot separate the floor from the
rate, so ``L_inf / L0`` is held near 1/2 unless the probes clearly flatten, and the sensitivity shape stays near
the measured one. Both capacity effects are >= 0, so the surrogate ranks a larger allocation at least as well
whatever the fit; which modules count is what the probes decide. Calibrations are cached as JSON (atomic write)
keyed by model, task, run config and probe config. Known limits: the probes see only the start of the run (the
longer they are, the better the extrapolation), and a shrink's lost directions are not modelled beyond the
floor (the live run truncates them). :func:`sim_vs_live_rank_correlation` measures how well the
surrogate orders held-out live allocations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rankrl.atomic import atomic_write_text
from rankrl.ranks.budgets import check_grid, pow2_grid
from rankrl.ranks.features import STATIC_FEATURE_NAMES, LayerFeatures, shape_features
from rankrl.targets import KINDS, TargetModule

__all__ = [
    "ProbeResult",
    "SimCalibration",
    "SimRun",
    "calibrate",
    "lr_area",
    "probe_allocations",
    "probe_live",
    "sim_vs_live_rank_correlation",
]

#: bump when the surrogate or the JSON layout changes (old cache files are then ignored)
SIM_VERSION = 1
_GRAD_COL = STATIC_FEATURE_NAMES.index("grad_sens_rel")
# Prior weights, relative to a data residual of one "largest observed loss drop". Short probes see only the start
# of the curve, where L_inf and the rate trade off (a plateau of noise fits "saturated at once" as well as "slow
# and steady"), so L_inf / L0 is held near 1/2 firmly and moves only when the probes clearly flatten; the shape
# of the sensitivities (gamma near 1: AdaLoRA's measured sensitivity, kind biases near 0) is held loosely.
_PRIOR_FLOOR = 1.0
_PRIOR_SHAPE = 0.1


def lr_area(start: int, stop: int, steps: int, warmup_steps: int = 0) -> float:
    """Sum of FineTuneRun's learning-rate factors over optimizer steps ``start .. stop-1`` (lr-weighted time).

    >>> lr_area(0, 4, 4)  # linear decay 1, 3/4, 1/2, 1/4
    2.5
    """
    s = np.arange(start, stop, dtype=np.float64)
    decay = np.maximum(0.0, (steps - s) / max(steps - warmup_steps, 1))
    return float(np.where(s < warmup_steps, (s + 1) / max(warmup_steps, 1), decay).sum())


@dataclass(frozen=True)
class ProbeResult:
    """Eval curve of one live run at a constant allocation."""

    ranks: tuple[int, ...]
    """rank per target module, target order"""
    steps: tuple[int, ...]
    """optimizer steps at each evaluation (the first is 0)"""
    losses: tuple[float, ...]
    """quality/eval_loss at each evaluation"""
    accuracies: tuple[float, ...]
    """quality/accuracy at each evaluation"""


@dataclass(frozen=True, eq=False)
class SimCalibration:
    """A fitted surrogate of one (model, task, run config); see the module docstring for the model.

    Build it with :func:`calibrate` (live probes) or directly from numbers (tests, what-if studies), e.g.
    ``SimCalibration.synthetic()``.
    """

    targets: tuple[TargetModule, ...]
    """the adapted modules, in row order"""
    static: np.ndarray
    """(n, len(STATIC_FEATURE_NAMES)) static feature rows of the real model (observation rows)"""
    r_max: int
    """directions allocated per module in the calibrated run"""
    loss0: float
    """eval loss before training (L0)"""
    loss_inf: float
    """asymptotic eval loss with every rank 0 (L_inf <= L0)"""
    rate0: float
    """progress per unit lr-weighted step with every rank 0 (head training, >= 0)"""
    rate1: float
    """extra progress per unit lr-weighted step per unit capacity (>= 0)"""
    sensitivity: np.ndarray
    """(n,) module sensitivities s_i, mean 1"""
    floor_decay: float = 0.0
    """the asymptote at capacity c is L_inf * exp(-floor_decay * c) (>= 0)"""
    run_steps: int = 100
    """total steps of the calibrated run's lr schedule (default schedule of predictions)"""
    warmup_steps: int = 0
    """warm-up steps of that schedule"""
    acc_intercept: float = 0.5
    """accuracy = clip(acc_intercept + acc_slope * loss, 0, 1)"""
    acc_slope: float = 0.0
    """see acc_intercept"""
    model: str = "synthetic"
    """model the probes ran on"""
    task: str = "synthetic"
    """task the probes ran on"""
    key: str = ""
    """cache key of the calibration (empty when built from numbers)"""
    probes: tuple[ProbeResult, ...] = ()
    """the live probes the fit used"""
    capacity_power: float = 1.0
    """p in capacity = (mean_i s_i log1p(r_i) / log1p(r_max)) ** p, in (0, 1]; 1: linear in the modules that are on"""

    def __post_init__(self) -> None:
        n = len(self.targets)
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "probes", tuple(self.probes))
        static = np.array(self.static, dtype=np.float32)
        sens = np.array(self.sensitivity, dtype=np.float64)
        if n == 0 or static.shape != (n, len(STATIC_FEATURE_NAMES)) or sens.shape != (n,):
            raise ValueError(f"need n >= 1 targets, static ({n}, {len(STATIC_FEATURE_NAMES)}) and sensitivity ({n},)")
        if not (np.isfinite(static).all() and np.isfinite(sens).all() and (sens >= 0).all() and sens.sum() > 0):
            raise ValueError("static features must be finite and sensitivities finite, >= 0 and not all 0")
        numbers = (self.loss0, self.loss_inf, self.rate0, self.rate1, self.floor_decay, self.acc_intercept,
                   self.acc_slope)  # fmt: skip
        if not all(math.isfinite(x) for x in numbers):
            raise ValueError("loss0, loss_inf, rates and accuracy coefficients must be finite")
        if not 0 <= self.loss_inf <= self.loss0 or min(self.rate0, self.rate1, self.floor_decay) < 0:
            raise ValueError(f"need 0 <= loss_inf <= loss0 and rates, floor_decay >= 0, got {self.loss_inf}, "
                             f"{self.loss0}, {self.rate0}, {self.rate1}, {self.floor_decay}")  # fmt: skip
        if not 0 < self.capacity_power <= 1:
            raise ValueError(f"capacity_power must be in (0, 1], got {self.capacity_power}")
        if self.r_max < 1 or self.run_steps < 1 or self.warmup_steps < 0:
            raise ValueError("r_max and run_steps must be >= 1 and warmup_steps >= 0")
        static.setflags(write=False)
        if abs(sens.mean() - 1.0) > 1e-9:  # already normalised (e.g. read back from JSON): keep the exact floats
            sens = sens / sens.mean()
        sens.setflags(write=False)
        object.__setattr__(self, "static", static)
        object.__setattr__(self, "sensitivity", sens)

    # ------------------------------------------------------------------------------------------ model
    def _rank_array(self, ranks: Mapping[str, int] | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(ranks, Mapping):
            ranks = [ranks[t.name] for t in self.targets]
        r = np.asarray(ranks, dtype=np.float64)
        if r.shape != (len(self.targets),) or (r < 0).any():
            raise ValueError(f"need {len(self.targets)} ranks >= 0, got {r.tolist()}")
        return r

    def capacity(self, ranks: Mapping[str, int] | Sequence[int] | np.ndarray) -> float:
        """``(mean_i s_i log1p(r_i) / log1p(r_max)) ** capacity_power``.

        >>> cal = SimCalibration.synthetic(sensitivity=[1.0] * 12)
        >>> sparse = [1] + [0] * 11  # one module of 12 at rank 1
        >>> round(cal.capacity(sparse), 4), round(dataclasses.replace(cal, capacity_power=0.5).capacity(sparse), 4)
        (0.0263, 0.1621)
        """
        linear = np.mean(self.sensitivity * np.log1p(self._rank_array(ranks))) / math.log1p(self.r_max)
        return float(linear**self.capacity_power)

    def rate(self, ranks: Mapping[str, int] | Sequence[int] | np.ndarray) -> float:
        """Progress per unit lr-weighted step at ``ranks``."""
        return self.rate0 + self.rate1 * self.capacity(ranks)

    def loss_at(self, progress: float, capacity: float = 0.0) -> float:
        """Eval loss after ``progress`` units of progress ``u`` at the current ``capacity``."""
        floor = self.loss_inf * math.exp(-self.floor_decay * capacity)
        return floor + (self.loss0 - floor) * math.exp(-progress)

    def accuracy_at(self, loss: float) -> float:
        """Accuracy predicted from the eval loss (linear fit on the probes, clipped to [0, 1])."""
        return float(np.clip(self.acc_intercept + self.acc_slope * loss, 0.0, 1.0))

    def predict_loss(self, ranks: Mapping[str, int] | Sequence[int], step: int, *, steps: int | None = None,
                     warmup_steps: int | None = None) -> float:  # fmt: skip
        """Eval loss after ``step`` optimizer steps at a constant allocation (default: the calibrated schedule)."""
        tau = lr_area(0, step, steps or self.run_steps, self.warmup_steps if warmup_steps is None else warmup_steps)
        return self.loss_at(self.rate(ranks) * tau, self.capacity(ranks))

    def features(self) -> LayerFeatures:
        """The static feature rows as :class:`~rankrl.ranks.features.LayerFeatures` (``.matrix`` adds rank_frac)."""
        return LayerFeatures(self.targets, self.static)

    # ------------------------------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (:meth:`from_dict` inverts it)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(version=SIM_VERSION, targets=[asdict(t) for t in self.targets], static=self.static.tolist(),
                   sensitivity=self.sensitivity.tolist(), probes=[asdict(p) for p in self.probes])  # fmt: skip
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimCalibration:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on another version or unknown keys."""
        data = dict(data)
        if data.pop("version", None) != SIM_VERSION:
            raise ValueError(f"calibration is not version {SIM_VERSION}; recalibrate")
        if unknown := sorted(set(data) - {f.name for f in dataclasses.fields(cls)}):
            raise ValueError(f"unknown calibration keys {unknown}")
        data["targets"] = tuple(TargetModule(**t) for t in data["targets"])
        data["probes"] = tuple(ProbeResult(**{k: tuple(v) for k, v in p.items()}) for p in data.get("probes", ()))
        return cls(**data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temp file + rename: a reader never sees half a file)."""
        return atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SimCalibration:
        """Read a calibration written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def synthetic(cls, num_layers: int = 2, hidden: int = 64, intermediate: int = 128, *, r_max: int = 8,
                  run_steps: int = 100, seed: int = 0, **numbers: Any) -> SimCalibration:  # fmt: skip
        """A BERT-shaped calibration from numbers alone (no model, no probes): 6 projections per layer, seeded
        random sensitivities. ``numbers`` override the curve (defaults: loss0 0.7, loss_inf 0.3, rate0 0.005,
        rate1 0.05, floor_decay 0.5, acc_intercept 1.0, acc_slope -0.7)."""
        shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "o": (hidden, hidden),
                  "up": (hidden, intermediate), "down": (intermediate, hidden)}  # fmt: skip
        targets = tuple(TargetModule(f"encoder.layer.{i}.{kind}", i, num_layers, kind, fin, fout)
                        for i in range(num_layers) for kind, (fin, fout) in shapes.items())  # fmt: skip
        rng = np.random.default_rng(seed)
        sens = rng.lognormal(0.0, 0.5, len(targets))
        sens /= sens.mean()
        spectrum = rng.uniform(0.1, 0.9, (len(targets), 5))
        grads = np.stack([sens, np.log1p(sens), sens], axis=1)  # grad_sens_rel, grad_sens_log, grad_norm_rel
        static = np.concatenate([shape_features(targets), spectrum, grads], axis=1)
        curve = dict(loss0=0.7, loss_inf=0.3, rate0=0.005, rate1=0.05, floor_decay=0.5, acc_intercept=1.0,
                     acc_slope=-0.7, sensitivity=sens)  # fmt: skip
        curve.update(numbers)
        return cls(targets, static, r_max, run_steps=run_steps, **curve)


class SimRun:
    """The surrogate stepped like a :class:`~rankrl.ranks.finetune.FineTuneRun` (same method names).

    Args:
        calibration: the fitted curve.
        steps: optimizer steps of the simulated run (its lr schedule).
        warmup_steps: warm-up steps of that schedule.
    """

    def __init__(self, calibration: SimCalibration, steps: int, warmup_steps: int = 0) -> None:
        from rankrl.ranks.finetune import RunState

        self.calibration, self.steps, self.warmup_steps = calibration, steps, warmup_steps
        self.targets = calibration.targets
        self.state = RunState()
        self.progress = 0.0
        self._ranks = dict.fromkeys((t.name for t in self.targets), 0)

    @property
    def finished(self) -> bool:
        return self.state.step >= self.steps

    @property
    def ranks(self) -> dict[str, int]:
        return dict(self._ranks)

    def set_ranks(self, ranks: Mapping[str, int]) -> None:
        r = self.calibration._rank_array(ranks)
        if (r > self.calibration.r_max).any():
            raise ValueError(f"ranks above r_max={self.calibration.r_max}: {r.tolist()}")
        self._ranks = {t.name: int(ranks[t.name]) for t in self.targets}

    def advance(self, k: int) -> dict[str, float]:
        stop = min(self.state.step + k, self.steps)
        tau = lr_area(self.state.step, stop, self.steps, self.warmup_steps)
        self.progress += self.calibration.rate(self._ranks) * tau
        self.state.step = stop
        loss = self.calibration.loss_at(self.progress, self.calibration.capacity(self._ranks))
        return {"train/loss": loss, "train/lr_area": tau}

    def snapshot(self) -> float:
        """The simulated weights (the progress made so far), like :meth:`FineTuneRun.snapshot`."""
        return self.progress

    def restore(self, snapshot: float) -> None:
        """Back to a :meth:`snapshot`'s weights; the step count and lr schedule go on (a lost round's update)."""
        self.progress = float(snapshot)

    def evaluate(self) -> dict[str, float]:
        loss = self.calibration.loss_at(self.progress, self.calibration.capacity(self._ranks))
        self.state.last_eval = {"quality/eval_loss": loss, "quality/accuracy": self.calibration.accuracy_at(loss)}
        return dict(self.state.last_eval)

    def features(self) -> LayerFeatures:
        return self.calibration.features()


def _probe(run: Any, probe_steps: int, probe_evals: int) -> ProbeResult:
    stops = sorted({int(round(x)) for x in np.linspace(0, probe_steps, probe_evals + 1)})
    steps, losses, accs = [], [], []
    for stop in stops:
        if stop > run.state.step and run.advance(stop - run.state.step).get("train/nan"):
            break  # a diverged probe keeps its finite prefix
        ev = run.evaluate()
        steps.append(run.state.step)
        losses.append(float(ev["quality/eval_loss"]))
        accs.append(float(ev["quality/accuracy"]))
    return ProbeResult(tuple(run.ranks[t.name] for t in run.targets), tuple(steps), tuple(losses), tuple(accs))


def probe_live(run_config: Any, allocations: Sequence[Mapping[str, int]], probe_steps: int,
               probe_evals: int = 1) -> list[ProbeResult]:  # fmt: skip
    """Run each allocation live for ``probe_steps`` steps of ``run_config``'s schedule (held-out checks)."""
    from rankrl.ranks.finetune import new_live_run
    from rankrl.tasks import load_task

    c = run_config
    task = load_task(c.task, seed=c.seed, labels=c.labels, max_train=c.max_train)
    return [_probe(new_live_run(c, a, task=task), probe_steps, probe_evals) for a in allocations]


#: the sparse probe of ``capacity="concave"`` turns on one module in this many (target order walks kinds and depths)
SPARSE_STRIDE = 16
CAPACITIES = ("linear", "concave")


def check_capacity(capacity: str, n_probes: int) -> None:
    """``ValueError`` naming the flags when ``capacity`` is not one of :data:`CAPACITIES` or a concave calibration
    has fewer than 3 probes (uniform top, uniform low, sparse)."""
    if capacity not in CAPACITIES:
        raise ValueError(f"--sim_capacity must be one of {', '.join(CAPACITIES)}, got {capacity!r}")
    if capacity == "concave" and n_probes < 3:
        raise ValueError(f"--sim_capacity concave needs --probes >= 3 (uniform top, uniform low, sparse), "
                         f"got --probes {n_probes}")  # fmt: skip


def probe_allocations(targets: Sequence[TargetModule], grid: Sequence[int], n: int, rng: np.random.Generator, *,
                      sparse: int = 0) -> list[dict[str, int]]:  # fmt: skip
    """The probe plan: uniform at the grid's top rank, uniform at its lowest non-zero rank, (``sparse`` > 0: one
    module in ``sparse`` at that lowest rank, the rest off), each kind alone at the top rank, then random grid
    allocations; the first ``n``."""
    levels = sorted(grid)
    top, low = levels[-1], next((g for g in levels if g > 0), levels[-1])
    plan = [{t.name: top for t in targets}, {t.name: low for t in targets}]
    if sparse:
        plan.append({t.name: (low if i % sparse == 0 else levels[0]) for i, t in enumerate(targets)})
    for kind in [k for k in KINDS if any(t.kind == k for t in targets)]:
        plan.append({t.name: (top if t.kind == kind else levels[0]) for t in targets})
    while len(plan) < n:
        plan.append({t.name: int(rng.choice(levels)) for t in targets})
    return plan[:n]


def calibration_key(run_config: Any, n_probes: int, probe_steps: int, probe_evals: int, grid: Sequence[int],
                    capacity: str = "linear", sparse_stride: int = SPARSE_STRIDE) -> str:  # fmt: skip
    """Cache key: model, task, every run setting that changes the curve, and the probe plan (a linear calibration's
    key has no ``capacity`` entry, so the files cached before the concave option still match)."""
    run = {k: v for k, v in asdict(run_config).items() if k not in ("threads", "eval_every")}
    extra = {} if capacity == "linear" else {"capacity": capacity, "sparse_stride": sparse_stride}
    return json.dumps({"version": SIM_VERSION, "run": run, "n_probes": n_probes, "probe_steps": probe_steps,
                       "probe_evals": probe_evals, "grid": list(grid), **extra},
                      sort_keys=True, default=str)  # fmt: skip


def calibrate(config: Any, n_probes: int = 4, probe_steps: int = 8, *, probe_evals: int = 2,
              grid: Sequence[int] | None = None, cache_dir: str | os.PathLike | None = None,
              refresh: bool = False, cache_only: bool = False, capacity: str = "linear",
              sparse_stride: int = SPARSE_STRIDE) -> SimCalibration:  # fmt: skip
    """Fit the surrogate of ``config``'s (model, task) from ``n_probes`` short live runs, or load it from cache.

    Args:
        config: a ``LoRARankConfig`` (its ``run`` and ``grid`` are used) or a ``FineTuneConfig``.
        n_probes: live probes (see :func:`probe_allocations`); >= 2 to see any effect of capacity.
        probe_steps: optimizer steps per probe, on the run's own lr schedule.
        probe_evals: evaluations per probe after step 0 (evenly spaced).
        grid: rank grid of the probes (default: ``config.grid`` or ``pow2_grid(r_max)``).
        cache_dir: JSON cache folder (default ``rankrl.models.cache_dir() / "lora_rank_sim"``).
        refresh: ignore a cached calibration and probe again.
        cache_only: never probe: raise ``FileNotFoundError`` when no cached calibration matches (e.g. to report on
            a calibration made earlier without paying for new live runs).
        capacity: ``"linear"`` (capacity power 1) or ``"concave"`` (the third probe is the sparse one and the power
            is fitted; needs ``n_probes >= 3``).
        sparse_stride: the sparse probe turns on one module in this many (concave only).
    """
    from rankrl.models import cache_dir as default_cache
    from rankrl.ranks.finetune import new_live_run
    from rankrl.tasks import load_task

    run_cfg = getattr(config, "run", config)
    grid = tuple(grid if grid is not None else getattr(config, "grid", None) or pow2_grid(run_cfg.r_max))
    if n_probes < 1 or probe_evals < 1 or not 1 <= probe_steps <= run_cfg.steps:
        raise ValueError(f"need n_probes >= 1, probe_evals >= 1 and 1 <= probe_steps <= steps ({run_cfg.steps})")
    check_capacity(capacity, n_probes)
    if sparse_stride < 1:
        raise ValueError(f"sparse_stride must be >= 1, got {sparse_stride}")
    key = calibration_key(run_cfg, n_probes, probe_steps, probe_evals, grid, capacity, sparse_stride)
    folder = Path(cache_dir) if cache_dir is not None else default_cache() / "lora_rank_sim"
    path = folder / f"calibration-{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"
    if not refresh and path.exists():
        try:
            cached = SimCalibration.load(path)
            if cached.key == key:
                return cached
        except (OSError, ValueError, KeyError, TypeError):  # unreadable or stale: probe again
            pass
    if cache_only:
        raise FileNotFoundError(f"no cached calibration for {run_cfg.model}/{run_cfg.task} with these settings at "
                                f"{path}; run without cache_only to probe (live runs)")  # fmt: skip
    task = load_task(run_cfg.task, seed=run_cfg.seed, labels=run_cfg.labels, max_train=run_cfg.max_train)
    first = new_live_run(run_cfg, task=task)
    targets = tuple(first.targets)
    check_grid(targets, grid, run_cfg.r_max)
    static = first.features().static
    plan = probe_allocations(targets, grid, n_probes, np.random.default_rng(run_cfg.seed),
                             sparse=sparse_stride if capacity == "concave" else 0)  # fmt: skip
    first.set_ranks(plan[0])
    probes = [_probe(first, probe_steps, probe_evals)]
    probes += [_probe(new_live_run(run_cfg, a, task=task), probe_steps, probe_evals) for a in plan[1:]]
    fit = _fit(targets, static[:, _GRAD_COL], probes, run_cfg, concave=capacity == "concave")
    cal = SimCalibration(targets, static, run_cfg.r_max, run_steps=run_cfg.steps, warmup_steps=run_cfg.warmup_steps,
                         model=run_cfg.model, task=run_cfg.task, key=key, probes=tuple(probes), **fit)  # fmt: skip
    cal.save(path)
    return cal


def _fit(targets: Sequence[TargetModule], grad_sens: np.ndarray, probes: Sequence[ProbeResult], run_cfg: Any, *,
         concave: bool = False) -> dict[str, Any]:  # fmt: skip
    """MAP fit of ``(L_inf/L0, rate0, rate1, floor_decay, gamma, kind biases[, capacity power])`` on the probes' eval
    points (the power only when ``concave``; held at 1 otherwise)."""
    from scipy.optimize import least_squares

    starts = [p.losses[0] for p in probes if p.losses and math.isfinite(p.losses[0])]
    if not starts:
        raise RuntimeError("every calibration probe diverged before its first evaluation; lower lr")
    loss0 = float(np.mean(starts))
    kinds = sorted({t.kind for t in targets}, key=KINDS.index)
    kind_idx = np.array([kinds.index(t.kind) for t in targets])
    # floored at 1% of the mean: a sensitivity measured at initialisation (q/k of a fresh attention are ~0) is a
    # noisy estimate, and a module with s_i = 0 could never be credited by the fit
    log_g = np.log(np.maximum(np.asarray(grad_sens, dtype=np.float64), 1e-2))
    rows = [(np.log1p(np.asarray(p.ranks, dtype=np.float64)), lr_area(0, s, run_cfg.steps, run_cfg.warmup_steps), L)
            for p in probes for s, L in zip(p.steps, p.losses, strict=True) if s > 0 and math.isfinite(L)]  # fmt: skip
    tau_max = max((r[1] for r in rows), default=1.0) or 1.0
    scale = max([abs(loss0 - r[2]) for r in rows] + [1e-3 * max(loss0, 1e-6)])
    log_r = np.array([r[0] for r in rows]).reshape(len(rows), len(targets))
    tau = np.array([r[1] for r in rows]) / tau_max
    obs = np.array([r[2] for r in rows])

    nb = len(kinds)  # x = [L_inf/L0, rate0, rate1, floor_decay, gamma, kind biases..., (power)]

    def sensitivity(x: np.ndarray) -> np.ndarray:
        s = np.exp(x[4] * log_g + x[5 : 5 + nb][kind_idx])
        return s / s.mean()

    def residuals(x: np.ndarray) -> np.ndarray:
        cap = ((log_r * sensitivity(x)).mean(axis=1) / math.log1p(run_cfg.r_max)) ** (x[5 + nb] if concave else 1.0)
        floor = loss0 * x[0] * np.exp(-x[3] * cap)
        pred = floor + (loss0 - floor) * np.exp(-(x[1] + x[2] * cap) * tau)
        shape = np.concatenate([[x[3], x[4] - 1.0], x[5 : 5 + nb]])
        prior = np.concatenate([[_PRIOR_FLOOR * (x[0] - 0.5)], _PRIOR_SHAPE * shape])
        return np.concatenate([(pred - obs) / scale, prior])

    # the power has no prior: the sparse probe is what places it
    power = ([0.5], [0.05], [1.0]) if concave else ([], [], [])
    x0 = np.concatenate([[0.5, 0.1, 1.0, 0.1, 1.0], np.zeros(nb), power[0]])
    lo = np.concatenate([[0.0, 0.0, 0.0, 0.0, 0.0], np.full(nb, -3.0), power[1]])
    hi = np.concatenate([[1.0, 50.0, 50.0, 5.0, 2.0], np.full(nb, 3.0), power[2]])
    if not rows:  # nothing to fit: the start values would pose as a calibration
        raise RuntimeError("no calibration probe has a finite eval loss after step 0 (each diverged or stopped at its "
                           "first evaluation), so the sim cannot be fitted; lower --env.run.lr, or raise "
                           "--probe_steps / --probe_evals")  # fmt: skip
    x = least_squares(residuals, x0, bounds=(lo, hi)).x
    points = [(L, a) for p in probes for L, a in zip(p.losses, p.accuracies, strict=True) if math.isfinite(L)]
    losses, accs = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    slope, intercept = np.polyfit(losses, accs, 1) if np.ptp(losses) > 1e-12 else (0.0, float(accs.mean()))
    return dict(loss0=loss0, loss_inf=float(loss0 * x[0]), rate0=float(x[1] / tau_max), rate1=float(x[2] / tau_max),
                floor_decay=float(x[3]), sensitivity=sensitivity(x), acc_intercept=float(intercept),
                acc_slope=float(slope), capacity_power=float(x[5 + nb]) if concave else 1.0)  # fmt: skip


def sim_vs_live_rank_correlation(calibration: SimCalibration,
                                 held_out_allocations: Sequence[Mapping[str, int] | Sequence[int]],
                                 live_results: Sequence[ProbeResult | float], *,
                                 step: int | None = None) -> float:  # fmt: skip
    """Spearman correlation between the surrogate's and the live eval losses of held-out allocations.

    Args:
        calibration: the surrogate.
        held_out_allocations: allocations the fit did not see, each constant over its run (``{module: rank}`` or
            ranks in target order).
        live_results: per allocation, a :class:`ProbeResult` (its last evaluation is compared, at its step) or
            a final eval loss measured after ``step`` steps.
        step: step of float results (default: the calibration's probe length, else its ``run_steps``).

    Returns:
        Spearman's rho (``scipy.stats.spearmanr``); 1 means the surrogate orders them exactly as live did,
        NaN when either side is constant.
    """
    from scipy.stats import spearmanr

    if len(held_out_allocations) != len(live_results) or len(live_results) < 2:
        raise ValueError("need >= 2 allocations and exactly one live result per allocation")
    default = step or max((p.steps[-1] for p in calibration.probes if p.steps), default=calibration.run_steps)
    pred, live = [], []
    for alloc, res in zip(held_out_allocations, live_results, strict=True):
        at, loss = (res.steps[-1], res.losses[-1]) if isinstance(res, ProbeResult) else (default, float(res))
        pred.append(calibration.predict_loss(alloc, at))
        live.append(loss)
    if np.ptp(pred) == 0 or np.ptp(live) == 0:
        return math.nan
    return float(spearmanr(pred, live).statistic)

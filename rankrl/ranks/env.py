"""LoRARankEnv: choose the LoRA rank of every adapted projection during a live fine-tuning run, under
parameter, compute and bandwidth budgets.

One episode is one fine-tuning run (:class:`~rankrl.ranks.finetune.FineTuneRun`) with ``decisions`` decision
points, under a budget drawn for the episode (``budget_rank_range``) and a channel drawn per round. The budget is
part of the observation. At each decision the policy gives every module a score; the scores are the modules'
*shares* of the budget (a softmax, with "off" for a share near 0), and a rounding that only rounds
(:func:`rankrl.ranks.rounding.allocate_by_shares`) turns them into grid ranks that spend the cap; the run trains
``steps // decisions`` steps at that allocation, the adapter update is sent over that round's wireless channel
(AirLLM-style remote fine-tuning: SNR drawn per round, optional Rayleigh fading; with ``deadline_s`` an update that
takes longer is lost and the server keeps the round's starting weights) and the server's copy is evaluated.
``decisions=1`` is a one-shot allocation; more re-allocate mid-run (AdaLoRA / DR-RL style) while learned
directions and their optimizer state survive (:mod:`rankrl.ranks.lora`).

Backends: ``live`` trains for real (``rankrl/LoRARank-v1``); ``sim`` steps a surrogate calibrated from short
live probes of the same (model, task) (``rankrl/LoRARank-Sim-v1``, :mod:`rankrl.ranks.sim`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from numbers import Integral
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rankrl.ranks.budgets import Budget, BudgetSpec, budget_metrics, check_grid, pow2_grid, unit_costs, violations
from rankrl.ranks.costs import Channel, allocation_cost, uniform_ranks
from rankrl.ranks.features import FEATURE_NAMES
from rankrl.ranks.finetune import FineTuneConfig, load_run_inputs, new_live_run
from rankrl.ranks.rounding import allocate_by_shares, project
from rankrl.ranks.sim import SimCalibration, SimRun, calibrate

__all__ = ["GLOBAL_NAMES", "LOSS_HIGH", "QUALITY_TERMS", "ROW_HIGH", "LoRARankConfig", "LoRARankEnv"]

#: the observation's global features, in order (``budget``: the round's binding cap as a fraction of the cost of
#: uniform r_max; ``budget_left``: 1 - the share of it the current allocation uses)
GLOBAL_NAMES: tuple[str, ...] = ("budget", "budget_left", "step_frac", "snr", "bandwidth", "loss")
#: feature rows are clipped to [0, ROW_HIGH] (gradient columns are relative to their mean, so rarely above ~5)
ROW_HIGH = 10.0
#: eval loss / initial eval loss is clipped to [0, LOSS_HIGH]
LOSS_HIGH = 4.0
#: what the quality reward measures
QUALITY_TERMS = ("loss", "accuracy")


@dataclass(frozen=True)
class LoRARankConfig:
    """Rank-allocation episode: the run, the decision grid, the budgets, the channel and the reward weights."""

    run: FineTuneConfig = field(default_factory=FineTuneConfig)
    """the fine-tuning run of one episode (model, task, r_max, lr, steps, ...); its `ranks` is ignored"""
    decisions: int = 4
    """decision points per episode, each followed by steps // decisions training steps (last takes the rest)"""
    rank_grid: tuple[int, ...] | None = None
    """ranks a module may get (None: 0 and powers of two up to run.r_max)"""
    max_modules: int = 64
    """observation/action rows; models with fewer adapted modules are padded and masked"""
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    """the caps every allocation spends (mean rank or parameters, FLOPs, transmit seconds)"""
    budget_rank_range: tuple[float, float] | None = None
    """per-episode parameter cap: a mean rank drawn log-uniformly from (low, high) (None: budget's fixed cap)"""
    share_scale: float = 3.0
    """action decoding: module i's share of the budget is proportional to exp(share_scale * score_i)"""
    off_share: float = 0.05
    """action decoding: a module whose share is below off_share x an even share (1 / modules) is off (rank 0)"""
    spend_action: bool = False
    """the action gains a last entry: the fraction of the round's budget to spend, min_spend ** ((1 - a) / 2)
    (a = 1: all of it; a = -1: min_spend), so the policy, not the rounding, decides how much of the cap to use"""
    min_spend: float = 1 / 16
    """the smallest fraction of the budget the spend entry can ask for (spend_action)"""
    snr_range_db: tuple[float, float] = (0.0, 20.0)
    """each round's average SNR is drawn uniformly from this range, in dB"""
    bandwidth_range_hz: tuple[float, float] = (1e6, 1e6)
    """each round's channel bandwidth is drawn uniformly from this range, in Hz"""
    rayleigh: bool = True
    """Rayleigh fading on each transmission (the budget uses the average capacity, the cost the faded one)"""
    deadline_s: float | None = None
    """seconds a round's update may take on its (faded) channel; a later one is lost, not applied (None: no deadline)"""
    quality: str = "loss"
    """quality reward: 'loss' (eval-loss decrease / initial loss) or 'accuracy' (eval-accuracy gain)"""
    w_quality: float = 1.0
    """weight of the quality reward"""
    w_params: float = 0.1
    """weight of the parameter cost (params / cap, or / params at uniform r_max when uncapped)"""
    w_flops: float = 0.0
    """weight of the FLOPs cost (flops / cap, or / flops at uniform r_max when uncapped)"""
    w_tx: float = 0.1
    """weight of the transmit cost (seconds / cap, or / seconds of uniform r_max on the mean channel)"""
    tx_cost_clip: float = 5.0
    """the normalised transmit cost is clipped here (deep Rayleigh fades make transmit seconds heavy-tailed)"""
    nan_penalty: float = 1.0
    """reward subtracted when the loss turns NaN/inf (the episode then ends)"""
    w_lost: float = 0.0
    """reward subtracted per round whose update missed deadline_s (lost)"""

    def __post_init__(self) -> None:
        if not isinstance(self.run, FineTuneConfig):
            raise TypeError(f"run must be a FineTuneConfig, got {type(self.run).__name__}")
        if not 1 <= self.decisions <= self.run.steps:
            raise ValueError(f"decisions must be in [1, run.steps={self.run.steps}], got {self.decisions}")
        if self.max_modules < 1:
            raise ValueError(f"max_modules must be >= 1, got {self.max_modules}")
        if self.rank_grid is not None:
            bad = [g for g in self.rank_grid if isinstance(g, bool) or not isinstance(g, Integral) or g < 0]
            if not self.rank_grid or bad:
                raise ValueError(f"rank_grid must be non-empty ints >= 0, got {self.rank_grid}")
            if max(self.rank_grid) > self.run.r_max:
                raise ValueError(f"rank_grid max {max(self.rank_grid)} exceeds run.r_max={self.run.r_max}; "
                                 "raise r_max or drop it")  # fmt: skip
        if not isinstance(self.budget, BudgetSpec):
            raise TypeError(f"budget must be a BudgetSpec, got {type(self.budget).__name__}")
        if self.budget_rank_range is not None:
            lo, hi = self.budget_rank_range
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
                raise ValueError(f"budget_rank_range must be finite (low, high) with 0 < low <= high, got "
                                 f"{self.budget_rank_range}")  # fmt: skip
        if not (math.isfinite(self.share_scale) and self.share_scale > 0):
            raise ValueError(f"share_scale must be finite and > 0, got {self.share_scale}")
        if not 0 <= self.off_share < 1:
            raise ValueError(f"off_share must be in [0, 1), got {self.off_share}")
        if not (math.isfinite(self.min_spend) and 0 < self.min_spend <= 1):
            raise ValueError(f"min_spend must be in (0, 1], got {self.min_spend}")
        for name in ("snr_range_db", "bandwidth_range_hz"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"{name} must be finite (low, high) with low <= high, got {(lo, hi)}")
        if self.bandwidth_range_hz[0] <= 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth_range_hz}")
        if self.quality not in QUALITY_TERMS:
            raise ValueError(f"quality must be one of {QUALITY_TERMS}, got {self.quality!r}")
        if not self.tx_cost_clip > 0:
            raise ValueError(f"tx_cost_clip must be > 0, got {self.tx_cost_clip}")
        if self.deadline_s is not None and not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise ValueError(f"deadline_s must be finite and > 0 (or None: no deadline), got {self.deadline_s}")
        for name in ("w_quality", "w_params", "w_flops", "w_tx", "nan_penalty", "w_lost"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")

    @property
    def grid(self) -> tuple[int, ...]:
        """The rank grid, sorted and without duplicates."""
        return tuple(sorted(set(self.rank_grid))) if self.rank_grid is not None else pow2_grid(self.run.r_max)


class LoRARankEnv(gym.Env):
    """Allocate LoRA ranks over a model's adapted projections while it fine-tunes, under budgets.

    ## Action Space
    ``Box(-1, 1, (max_modules,), float32)``: one score per module row (padded rows ignored). The scores are the
    modules' shares of the budget (:meth:`action_shares`): ``share_i = softmax(share_scale * a)_i`` over the real
    rows, a module whose share is below ``off_share / n`` is off (share 0), the rest renormalised. The shares become
    grid ranks by :func:`rankrl.ranks.rounding.allocate_by_shares` under the coming round's budget: continuous
    targets that split the cap as asked, floored to the grid, then filled step by step in order of the largest
    remainder while a step fits. So the allocation spends the cap (up to one grid step), and the rounding never
    turns on a module the policy switched off. Equal scores split the budget in equal *cost* shares (cheap
    modules get higher ranks than uniform LoRA would give them). :meth:`step_allocation` takes a
    ``{module: rank}`` request directly (baselines); it is projected onto the budget
    (:func:`rankrl.ranks.rounding.project`: never above the request).

    With ``spend_action=True`` the action is ``Box(-1, 1, (max_modules + 1,))``: the last entry ``a`` is the
    fraction of the round's budget to spend, ``min_spend ** ((1 - a) / 2)`` (:meth:`spend_fraction`; 1 at
    ``a = 1``), and the shares split that part of every cap. Without it the only way to spend less than the cap is
    to switch so many modules off that the rest hit ``r_max``: the rounding, not the policy, would decide how much
    is spent. ``info["budget/spend"]`` reports the fraction asked for.

    ## Observation Space
    ``Dict(rows=Box(0, 10, (max_modules, 22)), mask=Box(0, 1, (max_modules,)), globals=Box(0, high, (6,)))``,
    float32, the layout of RolloutBudgetEnv so the same set policy runs on both. ``rows`` are the
    model-agnostic feature rows of :data:`rankrl.ranks.features.FEATURE_NAMES` (shape, spectrum, gradient
    sensitivity, ``cost_share``, current ``rank_frac``), clipped to [0, 10]; ``mask`` marks real rows.
    ``globals`` (:data:`GLOBAL_NAMES`): the budget (the coming round's binding cap as a fraction of the same
    quantity at uniform ``r_max``, e.g. mean rank 2 of r_max 8 reads 0.25; 1 when uncapped), budget left (1 - the
    largest used share of any cap by the current allocation), step fraction, the coming round's SNR and bandwidth
    scaled to [0, 1] within their ranges (0.5 for a fixed value), and eval loss / initial eval loss (clipped to
    [0, 4]).

    ## Rewards
    Sum of the terms in ``info`` (``reward/*``): ``reward/quality`` = ``w_quality`` x (eval-loss decrease since
    the previous decision / initial eval loss) for ``quality="loss"``, or x the eval-accuracy gain for
    ``"accuracy"``; both telescope over an episode to the total improvement. Cost terms are negative and
    weighted by the fraction of training steps the allocation ran, so their episode sums are time averages
    comparable across ``decisions``: ``reward/params`` = -``w_params`` x params / cap, ``reward/flops`` =
    -``w_flops`` x FLOPs / cap, ``reward/tx`` = -``w_tx`` x min(transmit seconds (faded) / cap, ``tx_cost_clip``);
    an uncapped quantity is divided by its value at uniform ``r_max`` (tx: on the mean channel) instead.
    ``reward/nan`` = -``nan_penalty`` when the loss diverged, else 0. ``reward/lost`` = -``w_lost`` when the round's
    update was lost (``deadline_s``), else 0; a lost round's quality term is what the server's copy (the round's
    starting weights, at the new ranks) shows, so about no gain, and its transmit cost is still paid (it was sent).

    ## Remote fine-tuning
    Each round's update (``cost/bits`` of the active adapter) goes over that round's channel: ``cost/tx_seconds`` =
    bits / capacity (faded when ``rayleigh``). With ``deadline_s`` set, an update that needs more seconds is lost
    (AirLLM: an update that misses its slot is not applied): the run's trainable weights (adapters and head) go back
    to the round's start (``run.snapshot()`` / ``run.restore()``, on both backends) before the evaluation, while the
    step count, lr schedule, data order and optimizer moments go on. ``info``: ``tx/lost`` (0/1), ``tx/deadline_s``
    (only with a deadline) and, at the episode's end, ``tx/lost_rounds``. A policy sees the deadline only through the
    channel globals; the ``budget.tx_seconds`` cap (on the average channel) is the way to leave it room.

    ## Budget
    ``budget_rank_range=(lo, hi)`` draws each episode's parameter cap as a mean rank, log-uniformly in [lo, hi]
    (the flops and transmit-time caps of ``budget`` stay), so one policy learns every budget; None keeps
    ``budget``'s cap. The channel (SNR, bandwidth) is drawn every round from its ranges.

    ## Episode End
    Terminated after the last decision (the run has trained all its steps), or at once when the training or
    eval loss is NaN/inf (``info["reason"] = "nan_loss"``; nothing is transmitted). Never truncated by the env
    itself (wrap it in ``TimeLimit`` for that).

    ## Arguments
    ``backend``: "live" or "sim". ``config``: a :class:`LoRARankConfig`; its fields and those of its ``run``
    (:class:`FineTuneConfig`) may also be given as keywords, e.g.
    ``gym.make("rankrl/LoRARank-v0", model="tiny-bert", steps=6, decisions=2)``; unknown keywords raise.
    ``calibration``: the sim backend's :class:`SimCalibration` (default: :func:`calibrate` the run's model and
    task, from cache or short live probes); given one, the run's model and task are not used, only its
    ``r_max`` (must match), ``steps`` and ``warmup_steps``. ``tracker``: an optional
    :class:`rankrl.tracking.Tracker` that receives every step's numeric ``info`` (step = training steps across
    episodes). ``deadline_s`` / ``w_lost``: the per-round transmit deadline and the penalty of a lost round (see
    Remote fine-tuning). Bad grids and budgets below the minimum allocation (at the worst channel) raise
    ``ValueError`` at construction.

    ## Version History
    * v0: initial version (live and calibrated-sim backends). A NaN action entry now raises ``ValueError`` (it used
      to be read as score 0, the grid's middle rank); every finite action means what it did, so the id stays v0.
    * v1: the action is each module's share of the budget (softmax with "off", rounded to grid ranks that spend
      the cap) instead of a grid rank projected onto it; the observation gains the ``budget`` global and the
      ``cost_share`` row column; ``budget_rank_range`` draws the budget per episode. Later: ``deadline_s`` (a lost
      update is not applied) and ``w_lost``; with ``deadline_s=None`` (the default) every step is as before, channel
      draws included, and the new ``reward/lost`` term is 0, so the id stays v1. Later: ``spend_action`` (off by
      default: the action space and every step are as before, so the id stays v1).
    """

    metadata = {"render_modes": []}

    def __init__(self, backend: str = "live", config: LoRARankConfig | None = None,
                 calibration: SimCalibration | None = None, tracker: Any = None, render_mode: str | None = None,
                 **overrides: Any) -> None:  # fmt: skip
        env_keys = {f.name for f in fields(LoRARankConfig)} - {"run", "budget"}
        run_keys = {f.name for f in fields(FineTuneConfig)}
        budget_keys = {key: name for name, key in BudgetSpec.META_KEYS.items()}  # budget_rank=..., max_params=...
        if unknown := sorted(set(overrides) - env_keys - run_keys - set(budget_keys)):
            valid = sorted(env_keys | run_keys | set(budget_keys))
            raise ValueError(f"unknown LoRARankEnv arguments {unknown}; valid: {valid}")
        base = config or LoRARankConfig()
        run = FineTuneConfig(**{**_asdict(base.run), **{k: v for k, v in overrides.items() if k in run_keys}})
        budget = BudgetSpec(**{**_asdict(base.budget),
                               **{budget_keys[k]: v for k, v in overrides.items() if k in budget_keys}})  # fmt: skip
        env_over = {k: v for k, v in overrides.items() if k in env_keys}
        self.config = LoRARankConfig(**{**_asdict(base), **env_over, "run": run, "budget": budget})
        if backend not in ("live", "sim"):
            raise ValueError(f"backend must be 'live' or 'sim', got {backend!r}")
        if calibration is not None and backend != "sim":
            raise ValueError("a calibration is only used by backend='sim'")
        if render_mode is not None:
            raise ValueError("LoRARankEnv has no render modes")
        self.backend, self.render_mode, self.tracker = backend, render_mode, tracker
        cfg = self.config
        self._task = self._spare_model = None
        if backend == "live":
            from rankrl.targets import find_target_modules

            c = cfg.run
            if c.threads:  # before the model is built, not only when the run starts (FineTuneRun does it there)
                import torch

                torch.set_num_threads(c.threads)
            self._task, self._spare_model = load_run_inputs(c)
            targets = find_target_modules(self._spare_model.model)
        else:
            self.calibration = calibration if calibration is not None else calibrate(cfg)
            if self.calibration.r_max != cfg.run.r_max:
                raise ValueError(f"the calibration has r_max={self.calibration.r_max} but run.r_max="
                                 f"{cfg.run.r_max}; pass r_max={self.calibration.r_max} or recalibrate")  # fmt: skip
            targets = self.calibration.targets
        self.targets = tuple(targets)
        if len(self.targets) > cfg.max_modules:
            raise ValueError(f"the model has {len(self.targets)} adapted modules > max_modules={cfg.max_modules}; "
                             "raise max_modules")  # fmt: skip
        self.grid = check_grid(self.targets, cfg.grid, cfg.run.r_max)
        self._snr, self._bandwidth = cfg.snr_range_db[0], cfg.bandwidth_range_hz[0]  # redrawn on reset
        self._full = allocation_cost(self.targets, uniform_ranks(self.targets, cfg.run.r_max),
                                     precision_bits=self._bits)  # fmt: skip
        mean_channel = Channel(float(np.mean(cfg.bandwidth_range_hz)), float(np.mean(cfg.snr_range_db)))
        self._norm = {
            "flops": float(cfg.budget.flops or self._full.flops),
            "tx": float(cfg.budget.tx_seconds or self._full.bits / mean_channel.capacity_bps()),
        }
        self._units = unit_costs(self.targets, Budget(precision_bits=self._bits), all_constraints=True)
        lows = [cfg.budget] if cfg.budget_rank_range is None else [self._spec(cfg.budget_rank_range[0])]
        for spec in lows:  # infeasible budget (at the worst channel, the lowest drawn cap): raises here
            self._set_budget(spec)
            worst = self.round_budget(cfg.snr_range_db[0], cfg.bandwidth_range_hz[0])
            project(self.targets, [self.grid[0]] * len(self.targets), worst, self.grid)
        self._set_budget(cfg.budget if cfg.budget_rank_range is None else self._spec(float(np.sqrt(
            np.prod(cfg.budget_rank_range)))))  # until the first reset draws one  # fmt: skip
        rows, n_feat = cfg.max_modules, len(FEATURE_NAMES)
        self.action_space = spaces.Box(-1.0, 1.0, (rows + int(cfg.spend_action),), dtype=np.float32)
        glob_high = np.array([1.0, 1.0, 1.0, 1.0, 1.0, LOSS_HIGH], dtype=np.float32)
        self.observation_space = spaces.Dict({
            "rows": spaces.Box(0.0, ROW_HIGH, (rows, n_feat), dtype=np.float32),
            "mask": spaces.Box(0.0, 1.0, (rows,), dtype=np.float32),
            "globals": spaces.Box(np.zeros(len(GLOBAL_NAMES), np.float32), glob_high, dtype=np.float32),
        })  # fmt: skip
        self.run: Any = None
        self._log_step = 0

    @property
    def _bits(self) -> int:
        return self.config.run.precision_bits

    # ---------------------------------------------------------------------------------------------- budgets
    def _spec(self, mean_rank: float) -> BudgetSpec:
        return BudgetSpec(rank=float(mean_rank), params=None, flops=self.config.budget.flops,
                          tx_seconds=self.config.budget.tx_seconds)  # fmt: skip

    def _set_budget(self, spec: BudgetSpec) -> None:
        self.budget_spec = spec
        self._param_cap = spec.param_cap(self.targets)
        self._norm["params"] = float(self._param_cap or self._full.params)

    def round_budget(self, snr_db: float | None = None, bandwidth_hz: float | None = None) -> Budget:
        """The feasible set of a round (default: the coming round's channel); tx uses the average capacity."""
        snr = self._snr if snr_db is None else snr_db
        bw = self._bandwidth if bandwidth_hz is None else bandwidth_hz
        return self.budget_spec.resolve(self.targets, Channel(bw, snr), precision_bits=self._bits)

    def budget_fraction(self) -> float:
        """The coming round's binding cap as a fraction of the same quantity at uniform ``r_max`` (the ``budget``
        global; 1.0 when uncapped). Every cap is a multiple of ``r (in + out)``, so this is one number."""
        budget = self.round_budget()
        units = unit_costs(self.targets, budget)
        r_max = self.config.run.r_max
        fracs = [cap / (r_max * float(units[name].sum())) for name, cap in budget.caps.items()]
        return float(min(fracs + [1.0]))

    @property
    def channel(self) -> dict[str, float]:
        """The coming round's channel: ``{"snr_db": ..., "bandwidth_hz": ...}`` (drawn on reset and every step)."""
        return {"snr_db": self._snr, "bandwidth_hz": self._bandwidth}

    def set_channel(self, snr_db: float | None = None, bandwidth_hz: float | None = None) -> dict[str, float]:
        """Fix the coming round's channel instead of drawing it (None: the middle of the config's range), e.g. to
        allocate for a known link; the next step draws again. Returns :attr:`channel`."""
        cfg = self.config
        self._snr = float(np.mean(cfg.snr_range_db) if snr_db is None else snr_db)
        self._bandwidth = float(np.mean(cfg.bandwidth_range_hz) if bandwidth_hz is None else bandwidth_hz)
        if not (math.isfinite(self._snr) and math.isfinite(self._bandwidth) and self._bandwidth > 0):
            raise ValueError(f"set_channel: need a finite SNR and a positive bandwidth, got {self.channel}")
        return self.channel

    def observation(self) -> dict[str, np.ndarray]:
        """The observation of the coming decision (what the last ``reset``/``step`` returned, with the current
        channel)."""
        return self._obs()

    def _draw_channel(self) -> None:
        (s_lo, s_hi), (b_lo, b_hi) = self.config.snr_range_db, self.config.bandwidth_range_hz
        self._snr = float(self.np_random.uniform(s_lo, s_hi)) if s_hi > s_lo else float(s_lo)
        self._bandwidth = float(self.np_random.uniform(b_lo, b_hi)) if b_hi > b_lo else float(b_lo)

    # ------------------------------------------------------------------------------------------------ reset
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if options:
            raise ValueError(f"LoRARankEnv.reset takes no options, got {sorted(options)}")
        c = self.config.run
        lo_hi = self.config.budget_rank_range
        if lo_hi is not None:  # log-uniform: as many episodes between mean rank 0.5 and 1 as between 4 and 8
            self._set_budget(self._spec(float(np.exp(self.np_random.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]))))))
        if self.backend == "live":
            self.run = None  # free the previous run's model before loading the next
            loaded, self._spare_model = self._spare_model, None
            self.run = new_live_run(c, task=self._task, loaded=loaded)
        else:
            self.run = SimRun(self.calibration, c.steps, c.warmup_steps)
            self.run.set_ranks(dict.fromkeys(self.run.ranks, 0))
        self._features = self.run.features()
        first = self.run.evaluate()
        loss0 = first["quality/eval_loss"]
        self._loss0 = loss0 if math.isfinite(loss0) and loss0 > 0 else 1.0
        self._last = dict(first)
        self._decision, self._done, self._lost_rounds = 0, False, 0
        self._draw_channel()
        info = {**first, "cost/snr_db": self._snr, "cost/bandwidth_hz": self._bandwidth,
                "budget/mean_rank": self.budget_spec.rank or math.nan}  # fmt: skip
        return self._obs(), info

    # ------------------------------------------------------------------------------------------------- step
    def action_shares(self, action: np.ndarray) -> dict[str, float]:
        """Each module's share of the budget for a score action (padded entries ignored): softmax of
        ``share_scale * a`` over the real rows; shares below ``off_share / n`` are set to 0 (the module is off)
        and the rest renormalised. The top-scored module is never off, so the shares always sum to 1."""
        cfg = self.config
        a = np.asarray(action, dtype=np.float64).reshape(-1)[: len(self.targets)]
        if bad := [t.name for t, x in zip(self.targets, a, strict=True) if math.isnan(x)]:
            # a NaN score is a diverged policy, not a request for an even share
            raise ValueError(f"the action is NaN for {len(bad)} module(s) (e.g. {bad[0]}): the policy diverged; "
                             "retrain it (e.g. a lower --ppo_lr)")  # fmt: skip
        z = cfg.share_scale * np.clip(a, -1.0, 1.0)
        w = np.exp(z - z.max())
        share = w / w.sum()
        share[share < cfg.off_share / len(share)] = 0.0
        share /= share.sum()
        return {t.name: float(x) for t, x in zip(self.targets, share, strict=True)}

    def spend_fraction(self, action: np.ndarray) -> float:
        """The fraction of the round's budget an action asks to spend: 1 without ``spend_action``, else
        ``min_spend ** ((1 - a) / 2)`` of its last entry ``a`` (clipped to [-1, 1]): log-scaled like the budgets
        themselves, all of it at ``a = 1``, ``min_spend`` at ``a = -1``."""
        cfg = self.config
        if not cfg.spend_action:
            return 1.0
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape[0] != cfg.max_modules + 1:
            raise ValueError(f"with spend_action the action has max_modules + 1 = {cfg.max_modules + 1} entries (the "
                             f"last is the spend), got {a.shape[0]}; retrain the policy on this env")  # fmt: skip
        if math.isnan(a[-1]):
            raise ValueError("the action's spend entry is NaN: the policy diverged; retrain it (e.g. a lower --ppo_lr)")
        return float(cfg.min_spend ** ((1.0 - float(np.clip(a[-1], -1.0, 1.0))) / 2.0))

    def spend_budget(self, fraction: float) -> Budget:
        """The coming round's budget cut to ``fraction`` of every cap (an uncapped round: of the parameters of
        uniform ``r_max``)."""
        budget = self.round_budget()
        if fraction >= 1.0:
            return budget
        if not budget.caps:
            budget = dataclasses.replace(budget, max_params=int(self._full.params))
        return budget.scaled(fraction)

    def decode_action(self, action: np.ndarray) -> dict[str, int]:
        """Grid rank per module for a score action under the coming round's budget: :meth:`action_shares` rounded
        by :func:`rankrl.ranks.rounding.allocate_by_shares` (spends the cap, or the part of it the spend entry asks
        for; off modules stay 0)."""
        shares = self.action_shares(action)
        budget = self.spend_budget(self.spend_fraction(action))
        return allocate_by_shares(self.targets, shares, budget, self.grid, r_max=self.config.run.r_max)

    def project(self, desired: Mapping[str, int]) -> dict[str, int]:
        """The feasible allocation of the coming round for a request (see :func:`rankrl.ranks.rounding.project`)."""
        return project(self.targets, desired, self.round_budget(), self.grid, r_max=self.config.run.r_max)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        return self.step_allocation(self.decode_action(action), spend=self.spend_fraction(action))

    def step_allocation(self, desired: Mapping[str, int], *, spend: float = 1.0) -> tuple[dict, float, bool, bool,
                                                                                             dict]:  # fmt: skip
        """One decision with an explicit ``{module: rank}`` request (projected onto the round's budget); ``spend``
        is only reported (``budget/spend``: the fraction of the budget a score action asked to spend)."""
        if self.run is None or self._done:
            raise RuntimeError("the episode is over (or never started); call reset() first")
        cfg, budget = self.config, self.round_budget()
        ranks = self.project(desired)
        raw = max(violations(self.targets, {k: int(v) for k, v in desired.items()}, budget).values(), default=0.0)
        self.run.set_ranks(ranks)
        # the server's copy at the start of the round (after the re-allocation it decided): what stays if the
        # round's update misses its deadline (AirLLM: an update that misses its slot is not applied)
        snapshot = self.run.snapshot() if cfg.deadline_s is not None else None
        cost = allocation_cost(self.targets, ranks, precision_bits=self._bits)
        start = self.run.state.step
        last = self._decision == cfg.decisions - 1
        stop = cfg.run.steps if last else (self._decision + 1) * cfg.run.steps // cfg.decisions
        train = self.run.advance(stop - start)
        k = self.run.state.step - start
        nan = bool(train.get("train/nan")) or not math.isfinite(train.get("train/loss", 0.0))
        capacity = tx_seconds = 0.0
        lost = False
        if snapshot is not None and not nan:  # send before evaluating: the server evaluates what it received
            capacity, tx_seconds = self._transmit(cost.bits)
            if lost := tx_seconds > cfg.deadline_s:
                self.run.restore(snapshot)  # the steps were taken (and the lr schedule moved on), the update is lost
        ev = {"quality/eval_loss": math.nan, "quality/accuracy": math.nan} if nan else self.run.evaluate()
        nan = nan or not math.isfinite(ev["quality/eval_loss"])
        share = k / cfg.run.steps  # cost terms are time averages over the run
        if nan:  # a diverged update is not sent
            capacity = tx_seconds = 0.0
            lost = False
        elif snapshot is None:  # no deadline: drawn after the evaluation, as v1 always did (same channel draws)
            capacity, tx_seconds = self._transmit(cost.bits)
        self._lost_rounds += int(lost)
        if nan:
            quality = 0.0
        elif cfg.quality == "loss":
            quality = (self._last["quality/eval_loss"] - ev["quality/eval_loss"]) / self._loss0
        else:
            quality = ev["quality/accuracy"] - self._last["quality/accuracy"]
        terms = {
            "reward/quality": cfg.w_quality * quality,
            "reward/params": -cfg.w_params * share * cost.params / self._norm["params"],
            "reward/flops": -cfg.w_flops * share * cost.flops / self._norm["flops"],
            "reward/tx": -cfg.w_tx * share * min(tx_seconds / self._norm["tx"], cfg.tx_cost_clip),
            "reward/nan": -cfg.nan_penalty if nan else 0.0,
            "reward/lost": -cfg.w_lost if lost else 0.0,
        }
        reward = float(sum(terms.values()))
        info: dict[str, Any] = {
            **terms,
            "reward/total": reward,
            **cost.as_metrics(),
            **{f"rank/layer_{i}": ranks[t.name] for i, t in enumerate(self.targets)},
            "cost/tx_seconds": tx_seconds,
            "cost/capacity_bps": capacity,
            "cost/snr_db": self._snr,
            "cost/bandwidth_hz": self._bandwidth,
            "tx/lost": float(lost),
            **({} if cfg.deadline_s is None else {"tx/deadline_s": cfg.deadline_s}),
            **budget_metrics(self.targets, ranks, budget),
            "budget/raw_violation": raw,
            "budget/projected": float(ranks != {t.name: int(desired[t.name]) for t in self.targets}),
            "budget/mean_rank": self.budget_spec.rank or math.nan,
            "budget/fraction": self.budget_fraction(),
            "budget/spend": float(spend),
            **{k_: v for k_, v in train.items() if k_.startswith("train/")},
            **ev,
            "decision": self._decision,
            "ranks": dict(ranks),
            "desired_ranks": {t.name: int(desired[t.name]) for t in self.targets},
        }
        self._decision += 1
        terminated = nan or self._decision >= cfg.decisions
        if nan:
            info["reason"] = "nan_loss"
        else:
            self._last = dict(ev)
            if terminated:
                info["reason"] = "finished"
        if terminated:
            info["tx/lost_rounds"] = self._lost_rounds
        self._done = terminated
        if not terminated:
            self._draw_channel()
        self._log_step += max(k, 1)
        if self.tracker is not None:
            numeric = {k_: v for k_, v in info.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            self.tracker.log(numeric, step=self._log_step)
        return self._obs(), reward, terminated, False, info

    def _transmit(self, bits: float) -> tuple[float, float]:
        """(capacity in bit/s, seconds) of sending ``bits`` over the round's channel, faded when ``rayleigh``."""
        cfg = self.config
        capacity = Channel(self._bandwidth, self._snr, cfg.rayleigh).capacity_bps(self.np_random)
        return capacity, (bits / capacity if bits else 0.0)

    # ---------------------------------------------------------------------------------------- observation
    def _obs(self) -> dict[str, np.ndarray]:
        cfg, n = self.config, len(self.targets)
        ranks = self.run.ranks
        rows = np.zeros((cfg.max_modules, len(FEATURE_NAMES)), dtype=np.float32)
        rows[:n] = np.clip(self._features.matrix(ranks, cfg.run.r_max), 0.0, ROW_HIGH)
        mask = np.zeros(cfg.max_modules, dtype=np.float32)
        mask[:n] = 1.0
        # costs are linear in rank (rankrl.ranks.budgets), so shares of the caps are dot products: no allocation_cost
        r = np.array([ranks[t.name] for t in self.targets], dtype=np.float64)
        totals = {name: float(u @ r) for name, u in self._units.items()}
        caps = (("params", self._param_cap), ("flops", self.budget_spec.flops))
        shares = [totals[name] / cap for name, cap in caps if cap]
        if self.budget_spec.tx_seconds:
            shares.append(totals["bits"] / Channel(self._bandwidth, self._snr).capacity_bps()
                          / self.budget_spec.tx_seconds)  # fmt: skip
        shares = shares or [totals["params"] / self._norm["params"]]
        glob = np.array([
            self.budget_fraction(),
            1.0 - max(shares),
            self.run.state.step / cfg.run.steps,
            _unit(self._snr, cfg.snr_range_db),
            _unit(self._bandwidth, cfg.bandwidth_range_hz),
            self._last["quality/eval_loss"] / self._loss0,
        ], dtype=np.float64)  # fmt: skip
        glob = np.clip(np.nan_to_num(glob, nan=1.0), 0.0, [1.0, 1.0, 1.0, 1.0, 1.0, LOSS_HIGH]).astype(np.float32)
        return {"rows": rows, "mask": mask, "globals": glob}

    def close(self) -> None:
        self.run = None


def _unit(x: float, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return 0.5 if hi <= lo else (x - lo) / (hi - lo)


def _asdict(cfg: object) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}  # shallow, unlike dataclasses.asdict

"""``rankrl train-policy``: train a LoRA rank allocator (SB3 PPO + the set policy) on LoRARankEnv.

The policy learns on ``rankrl/LoRARank-Sim-v1`` (a surrogate calibrated from short live probes of the same model
and task, :func:`rankrl.ranks.sim.calibrate`, cached) or directly on the live env. SB3 is used as a
library: the architecture comes in through ``policy_kwargs`` (:class:`~rankrl.set_policy.SetActorCriticPolicy`),
logging and checkpoints through callbacks. Checkpoints are taken right after a PPO update and hold no pickle:
the policy's weights (safetensors), the optimizer state (``torch.load(weights_only=True)``) and the counters,
config and network as JSON, each written atomically. ``--resume`` rebuilds PPO from the config, loads them and
continues (``learn(reset_num_timesteps=False)``), losing nothing but the rollout in flight; its ``metrics.jsonl``
is first cut back to the checkpoint's step. SIGINT / SIGTERM (Ctrl-C, ``kill``) stop at the next env step: the
checkpoint and the policy files are written at the last update and the command exits with status 130.

By default every episode draws its budget (``--env.budget_rank_range``, mean ranks 0.5 to 8) and the policy sees
it in its observation, so one policy serves every budget. Whatever it trained on, the policy is then run for one
live episode (deterministic) next to uniform LoRA at the fixed budget ``--env.budget.rank`` (same seed, same
channel draws): the sim is only a surrogate (``--no_live_check`` skips that live episode, e.g. for a model too
slow to fine-tune twice more on the machine). Sim-trained policies are also compared with uniform and with their
untrained start (same seeds) on the sim at several budgets. Outputs in ``--out``:
``policy.safetensors`` and ``policy.json`` (network and the observation layout that :mod:`rankrl.ranks.apply`
checks), ``checkpoint.safetensors`` + ``checkpoint_optimizer.pt`` + ``checkpoint.json``, ``metrics.jsonl``
(+ W&B), ``curves.png``, ``rank_heatmap*.png`` and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rankrl.ranks.budgets import BudgetSpec
from rankrl.ranks.diffusion import DiffusionConfig
from rankrl.ranks.env import LoRARankConfig
from rankrl.ranks.episodes import (
    episode_summary,
    flat_summary,
    plot_rank_heatmap,
    print_table,
    rollout_episode,
    rollout_metrics,
    uniform_allocator,
)
from rankrl.ranks.finetune import FineTuneConfig
from rankrl.ranks.policy import POLICY_FILE, POLICY_META, legacy_message, save_json, save_policy
from rankrl.ranks.sim import check_capacity
from rankrl.resume import check_same_settings, truncate_metrics

__all__ = [
    "ENV_IDS",
    "TrainPolicyConfig",
    "TrainResult",
    "make_env",
    "train_policy",
]

ENV_IDS: tuple[str, ...] = ("rankrl/LoRARank-Sim-v1", "rankrl/LoRARank-v1")
CHECKPOINT_FILE, CHECKPOINT_STATE, CHECKPOINT_OPTIMIZER = "checkpoint.safetensors", "checkpoint.json", \
    "checkpoint_optimizer.pt"
#: the old, pickle-based SB3 checkpoint: refused by ``--resume``, converted by ``rankrl convert-policy --trust``
LEGACY_CHECKPOINT_FILE = "checkpoint.zip"
CHECKPOINT_FORMAT = "rankrl/ranks/train-policy-checkpoint"
#: config fields that may change between a run and its --resume
RESUMABLE_CHANGES = frozenset({"timesteps", "checkpoint_every", "resume", "wandb", "progress", "env.run.threads",
                               "out", "live_check"})


#: budgets a default policy trains on: each episode's mean rank is drawn log-uniformly from this range
DEFAULT_BUDGET_RANK_RANGE = (0.5, 8.0)
#: mean ranks of the sim evaluation table (each inside the default training range)
EVAL_BUDGET_RANKS = (0.5, 1.0, 2.0, 4.0)


def _episode() -> LoRARankConfig:
    """A policy-training episode: short runs at a higher learning rate, evaluated only at the decisions; the budget
    is drawn per episode from DEFAULT_BUDGET_RANK_RANGE (the live check runs at ``budget.rank``)."""
    return LoRARankConfig(run=FineTuneConfig(steps=40, lr=3e-3, max_eval=128, eval_every=0),
                          budget_rank_range=DEFAULT_BUDGET_RANK_RANGE)  # fmt: skip


@dataclass(frozen=True)
class TrainPolicyConfig:
    """Train a LoRA rank-allocation policy (PPO, one head shared by all modules) on the LoRARank env, evaluate it
    live against uniform LoRA at the same budget, and save policy.safetensors + policy.json for `rankrl apply`.

    The episode is the env config, which nests the fine-tuning run: ``--env.run.lr``, ``--env.run.model``,
    ``--env.budget.rank``, ``--env.decisions``, ``--env.w_quality``, ... (every field of both is a flag)."""

    env: LoRARankConfig = field(default_factory=_episode)
    """the episode: its run (model, task, steps, lr, r_max, seed, threads, ...), grid, budget, channel, reward"""
    env_id: str = "rankrl/LoRARank-Sim-v1"
    """training env: 'rankrl/LoRARank-Sim-v1' (calibrated surrogate) or 'rankrl/LoRARank-v1' (every step trains)"""
    probes: int = 3
    """sim calibration: live probe runs (cached per model, task and run config)"""
    # whole-episode probes by default: minilm on 'default' shows no learning before ~20 of 40 steps, so shorter
    # probes leave the sim blind to what rank does (measured: 8-step probes fit rate0 = rate1 = 0)
    probe_steps: int | None = None
    """sim calibration: fine-tuning steps per probe (None: the whole episode)"""
    probe_evals: int = 2
    """sim calibration: evaluations per probe"""
    sim_capacity: str = "linear"
    """sim calibration: 'linear' (capacity grows with how many modules are on) or 'concave' (one more live probe, 1
    module in 16 at the lowest rank, fits how fast capacity saturates: for budgets far below uniform rank 1)"""
    timesteps: int = 4096
    """PPO env steps (decisions) in total, over all runs of this --out"""
    n_steps: int = 128
    """PPO rollout length between updates (keep small on the live env: every step is real training)"""
    ppo_batch_size: int = 64
    """PPO minibatch size"""
    n_epochs: int = 5
    """PPO epochs per update"""
    ppo_lr: float = 1e-3
    """PPO Adam learning rate"""
    gamma: float = 0.99
    """discount (episodes are `decisions` steps long)"""
    ent_coef: float = 0.0
    """PPO entropy bonus"""
    hidden: int = 64
    """width of the policy's per-module encoder"""
    context: str = "mean"
    """how a module sees the others: 'mean' (masked mean-pool) or 'attention'"""
    out: str = "runs/policy"
    """run directory: policy.safetensors, policy.json, checkpoint.*, metrics.jsonl, PNGs, summary.json"""
    checkpoint_every: int = 1024
    """checkpoint after the first PPO update past every this many env steps (0: only at the end)"""
    resume: bool = False
    """continue from <out>/checkpoint.* up to --timesteps (the other settings must match the checkpoint's)"""
    wandb: bool = True
    """log to W&B (offline unless WANDB_MODE / credentials say otherwise)"""
    progress: bool = True
    """show a progress bar"""
    live_check: bool = True
    """run the final live evaluation (one fine-tune per allocator at the live-check budget);
    --no_live_check skips it, e.g. when the run is too slow on this machine"""
    algo: str = "ppo"
    """'ppo' (the set policy acts per module) or 'diffusion' (AirLLM: PPO picks a coarse latent, a DDIM refines it)"""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """--algo diffusion: the refiner (--diffusion.guidance_scale, --diffusion.num_inference_steps, ...)"""
    refit_steps: int = 100
    """--algo diffusion: DDIM Adam steps on the replay buffer after every PPO rollout"""

    def __post_init__(self) -> None:
        if self.algo not in ("ppo", "diffusion"):
            raise ValueError(f"--algo must be 'ppo' or 'diffusion', got {self.algo!r}")
        if self.refit_steps < 0:
            raise ValueError(f"--refit_steps must be >= 0, got {self.refit_steps}")
        if self.env_id not in ENV_IDS:
            raise ValueError(f"--env_id: the training env must be one of {ENV_IDS}, got {self.env_id!r}")
        if not isinstance(self.env, LoRARankConfig):
            raise TypeError(f"env must be a LoRARankConfig, got {type(self.env).__name__}")
        for name in ("timesteps", "n_steps", "ppo_batch_size", "n_epochs", "hidden", "probes", "probe_evals"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"--checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if not (self.ppo_lr > 0 and 0 < self.gamma <= 1 and self.ent_coef >= 0):
            raise ValueError("need --ppo_lr > 0, 0 < --gamma <= 1 and --ent_coef >= 0")
        check_capacity(self.sim_capacity, self.probes)  # before any probe or resume
        if self.context not in ("mean", "attention"):
            raise ValueError(f"--context must be 'mean' or 'attention', got {self.context!r}")
        steps = self.env.run.steps
        if self.probe_steps is not None and not 1 <= self.probe_steps <= steps:
            raise ValueError(f"--probe_steps must be in [1, --env.run.steps={steps}] or None, got {self.probe_steps}")

    @property
    def backend(self) -> str:
        """'sim' or 'live'."""
        return "sim" if "Sim" in self.env_id else "live"

    @property
    def run(self) -> FineTuneConfig:
        """The fine-tuning run of one episode (``env.run``)."""
        return self.env.run

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainPolicyConfig:
        """The config a ``policy.json``'s ``train_config`` (``dataclasses.asdict``) records; unknown keys raise."""
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        env = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("env").items()}
        env = LoRARankConfig(**{**env, "run": FineTuneConfig(**env["run"]), "budget": BudgetSpec(**env["budget"])})
        if "diffusion" in d:
            d["diffusion"] = DiffusionConfig(**d["diffusion"])
        return cls(env=env, **d)


@dataclass
class TrainResult:
    """What :func:`train_policy` produced.

    Attributes:
        model: the trained SB3 ``PPO``.
        out: the run directory.
        timesteps_done: env steps PPO has taken over all runs of this directory.
        live: live evaluation, ``{"policy": summary, "uniform": summary}`` (see :func:`episode_summary`); empty
            when ``live_check`` is off.
        sim: sim evaluation (sim training only), same layout.
        sim_budgets: sim evaluation by mean-rank budget, :func:`sim_budget_table` (sim training only).
        interrupted: the name of the signal (``"SIGINT"``/``"SIGTERM"``) that stopped training early (checkpoint
            and policy saved, no evaluation), else ``""``.
    """

    model: Any
    out: Path
    timesteps_done: int
    live: dict[str, dict[str, Any]] = field(default_factory=dict)
    sim: dict[str, dict[str, Any]] = field(default_factory=dict)
    interrupted: str = ""
    sim_budgets: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------ envs
def make_env(config: TrainPolicyConfig, backend: str | None = None, calibration: Any = None,
             budget: BudgetSpec | None = None) -> Any:  # fmt: skip
    """A :class:`~rankrl.ranks.env.LoRARankEnv` of ``config`` (``backend`` defaults to ``config.env_id``'s);
    ``budget`` fixes the budget of every episode (no draw from ``budget_rank_range``)."""
    from dataclasses import replace

    from rankrl.ranks.env import LoRARankEnv

    backend = backend or config.backend
    env_config = config.env if budget is None else replace(config.env, budget=budget, budget_rank_range=None)
    return LoRARankEnv(backend, config=env_config, calibration=calibration if backend == "sim" else None)


def fixed_budget(config: TrainPolicyConfig, mean_rank: float | None = None) -> BudgetSpec:
    """``config``'s budget (``--env.budget.*``), or with its parameter cap replaced by ``mean_rank``."""
    if mean_rank is None:
        return config.env.budget
    return config.env.budget.merged(BudgetSpec(rank=mean_rank, params=None, flops=None, tx_seconds=None))


def sim_budget_table(config: TrainPolicyConfig, calibration: Any, allocators: Mapping[str, Callable],
                     mean_ranks: tuple[float, ...] = EVAL_BUDGET_RANKS, seeds: tuple[int, ...] = (1, 2, 3)
                     ) -> dict[str, dict[str, dict[str, float]]]:  # fmt: skip
    """Mean sim reward, final accuracy, cap use and bits sent per update (``cost/bits``, mean over the decisions) of
    each allocator at each mean-rank budget (same seeds): ``{str(mean_rank): {name: {"reward", "accuracy", "used",
    "bits"}}}``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in mean_ranks:
        env = make_env(config, "sim", calibration, fixed_budget(config, r))
        row = {}
        for name, fn in allocators.items():
            eps = [rollout_episode(env, fn, config.run.seed + s) for s in seeds]
            row[name] = {"reward": float(np.mean([sum(i["reward/total"] for i in e) for e in eps])),
                         "accuracy": float(np.mean([e[-1]["quality/accuracy"] for e in eps])),
                         "used": float(np.mean([i.get("budget/used_params", math.nan) for e in eps for i in e])),
                         "bits": float(np.mean([i["cost/bits"] for e in eps for i in e]))}
        out[str(r)] = row
    return out


# ---------------------------------------------------------------------------------------------- callbacks
def _callbacks(tracker: Any, config: TrainPolicyConfig, out: Path, stop: Any = ()) -> list[Any]:
    from stable_baselines3.common.callbacks import BaseCallback

    class EpisodeLogger(BaseCallback):
        """Per rollout: mean episode reward and its terms, budget use/violation, costs, final quality; plus the
        previous update's ``train/*`` values from SB3's logger."""

        def __init__(self) -> None:
            super().__init__()
            self.running: dict[int, list[dict]] = {}
            self.finished: list[dict[str, Any]] = []

        def _on_step(self) -> bool:
            for k, (info, done) in enumerate(zip(self.locals["infos"], self.locals["dones"], strict=True)):
                self.running.setdefault(k, []).append(info)
                if done:
                    self.finished.append(episode_summary(self.running.pop(k)))
            return not stop  # a SIGINT/SIGTERM: stop learn() here (rollout_end is not called, nothing logged)

        def _on_rollout_end(self) -> None:
            metrics = {k: v for k, v in self.model.logger.name_to_value.items() if k.startswith("train/")}
            metrics.update(rollout_metrics(self.finished))
            self.finished = []
            if metrics:
                tracker.log(metrics, step=self.num_timesteps)

    class Checkpointer(BaseCallback):
        """Atomic checkpoint right after a PPO update (rollout start): the weights then reflect every counted step."""

        def __init__(self) -> None:
            super().__init__()
            self.last = None
            self.updated_at = 0  # env steps the weights reflect: the count at the last update

        def _on_training_start(self) -> None:
            self.last = self.updated_at = self.num_timesteps

        def _on_rollout_start(self) -> None:
            self.updated_at = self.num_timesteps
            every = config.checkpoint_every
            if every and self.num_timesteps - self.last >= every:
                save_checkpoint(self.model, out, config)
                self.last = self.num_timesteps

        def _on_step(self) -> bool:
            return True

    return [EpisodeLogger(), Checkpointer()]


def save_checkpoint(model: Any, out: Path, config: TrainPolicyConfig, timesteps_done: int | None = None, *,
                    network: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """``checkpoint.safetensors`` (policy weights), ``checkpoint_optimizer.pt`` (the Adam state: tensors and numbers
    only, read back with ``weights_only=True``) and, last, ``checkpoint.json`` (steps done, updates done, config,
    network, ``extra``); each atomic, the JSON last so that it only ever names complete files (``--algo diffusion``
    writes its refiner files before calling this). ``timesteps_done`` defaults to ``model.num_timesteps``;
    ``network`` to the set policy's :func:`rankrl.set_policy.policy_spec`."""
    import torch

    from rankrl.atomic import atomic_write
    from rankrl.set_policy import policy_spec, save_policy_weights

    done = int(model.num_timesteps if timesteps_done is None else timesteps_done)
    save_policy_weights(model.policy, out / CHECKPOINT_FILE)
    optimizer = model.policy.optimizer.state_dict()
    atomic_write(out / CHECKPOINT_OPTIMIZER, lambda p: torch.save(optimizer, p), ".pt")
    save_json({"format": CHECKPOINT_FORMAT, "timesteps_done": done, "n_updates": int(model._n_updates),
               "timesteps": config.timesteps, "saved_at": time.time(), "config": asdict(config),
               "network": dict(network) if network is not None else policy_spec(model.policy),
               **dict(extra or {})}, out / CHECKPOINT_STATE)  # fmt: skip
    return out / CHECKPOINT_FILE


def load_checkpoint(model: Any, out: Path, state: Mapping[str, Any], network: Mapping[str, Any] | None = None) -> None:
    """Load a :func:`save_checkpoint` into a PPO built from the same config (weights, optimizer, counters);
    nothing is unpickled. ``network``: what the settings build (default: the set policy's spec)."""
    import torch

    from rankrl.set_policy import load_policy_weights, policy_spec

    network = network if network is not None else policy_spec(model.policy)
    if json.loads(json.dumps(network)) != state["network"]:
        raise SystemExit(f"--resume: the network in {out / CHECKPOINT_STATE} differs from the one these settings "
                         "build; pass the checkpoint's settings or use a new --out")  # fmt: skip
    load_policy_weights(model.policy, out / CHECKPOINT_FILE)
    model.policy.optimizer.load_state_dict(torch.load(out / CHECKPOINT_OPTIMIZER, weights_only=True))
    model.num_timesteps = int(state["timesteps_done"])
    model._n_updates = int(state["n_updates"])


def check_resumable(config: TrainPolicyConfig, out: Path) -> dict[str, Any]:
    """The ``checkpoint.json`` state of ``out`` when ``config`` may resume it; ``SystemExit`` naming the fix when no
    complete checkpoint is there, it is of another format or its settings differ (beyond RESUMABLE_CHANGES)."""
    state_path, files = out / CHECKPOINT_STATE, (out / CHECKPOINT_FILE, out / CHECKPOINT_OPTIMIZER)
    if not all(f.exists() for f in files) and (out / LEGACY_CHECKPOINT_FILE).exists():
        raise SystemExit(f"--resume: {legacy_message(out / LEGACY_CHECKPOINT_FILE, out)}")
    if not (state_path.exists() and all(f.exists() for f in files)):
        raise SystemExit(f"--resume: no checkpoint ({CHECKPOINT_FILE} + {CHECKPOINT_OPTIMIZER} + {CHECKPOINT_STATE}) "
                         f"in {out}; run without --resume first")  # fmt: skip
    state = json.loads(state_path.read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"--resume: {state_path} is not a train-policy checkpoint of this rankrl; use a new --out")
    check_same_settings(state["config"], asdict(config), RESUMABLE_CHANGES, out=out)
    return state


# -------------------------------------------------------------------------------------------------- train
def train_policy(config: TrainPolicyConfig, *, calibration: Any = None) -> TrainResult:
    """Train (or resume) a rank policy, save it, evaluate it on sim (when sim-trained) and on live (unless
    ``config.live_check`` is False).

    SIGINT / SIGTERM while it runs stop training at the next env step: the checkpoint and the policy files are
    written at the last PPO update, evaluation is skipped and the result has ``interrupted`` set (the CLI exits 130).

    Args:
        config: the run.
        calibration: a :class:`~rankrl.ranks.sim.SimCalibration` for the sim env (default: calibrate
            ``config``'s model and task from live probes, or read that calibration from cache).
    """
    from rankrl.interrupt import stop_on_signals

    with stop_on_signals() as stop:
        return _train_policy(config, calibration, stop)


def _train_policy(config: TrainPolicyConfig, calibration: Any, stop: Any) -> TrainResult:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rankrl.plots import plot_curves
    from rankrl.ranks.sim import calibrate
    from rankrl.set_policy import SetActorCriticPolicy
    from rankrl.tracking import Tracker, read_metrics

    out = Path(config.out)
    state = check_resumable(config, out) if config.resume else None
    threads = torch.get_num_threads()
    if config.backend == "sim" and calibration is None:
        t0 = time.time()
        probe_steps = config.probe_steps or config.run.steps
        print(f"calibrating the sim on {config.run.model}/{config.run.task}: {config.probes} live probes x "
              f"{probe_steps} steps (cached per model, task and settings) ...", flush=True)  # fmt: skip
        if config.run.threads:
            torch.set_num_threads(config.run.threads)
        calibration = calibrate(config.env, config.probes, probe_steps, probe_evals=config.probe_evals,
                                capacity=config.sim_capacity)  # fmt: skip
        print(f"  done in {time.time() - t0:.1f}s: loss0 {calibration.loss0:.3f}, floor {calibration.loss_inf:.3f}, "
              f"rate0 {calibration.rate0:.4f}, rate1 {calibration.rate1:.4f}, "
              f"capacity power {calibration.capacity_power:.3f}", flush=True)  # fmt: skip
    if state is not None and (cut := truncate_metrics(out, int(state["timesteps_done"]))):
        print(f"metrics.jsonl: dropped {cut} rows logged after the checkpoint (step {state['timesteps_done']})")
    tracker = Tracker(out, config=asdict(config) | {"job": "train-policy"}, use_wandb=config.wandb,
                      resume=config.resume)  # fmt: skip
    try:
        vec = DummyVecEnv([lambda: make_env(config, calibration=calibration)])
        vec.seed(config.run.seed)
        targets = vec.envs[0].unwrapped.targets
        if config.backend == "sim":
            torch.set_num_threads(1)  # small policy nets and a numpy surrogate: one thread is fastest
        model = PPO(SetActorCriticPolicy, vec, n_steps=config.n_steps, batch_size=min(config.ppo_batch_size,
                    config.n_steps), n_epochs=config.n_epochs, learning_rate=config.ppo_lr, gamma=config.gamma,
                    gae_lambda=0.95, ent_coef=config.ent_coef, seed=config.run.seed, device="cpu", verbose=0,
                    policy_kwargs=dict(hidden=config.hidden, context=config.context, log_std_init=-1.0))  # fmt: skip
        if state is not None:
            load_checkpoint(model, out, state)
            print(f"resuming from {out / CHECKPOINT_FILE} at {model.num_timesteps} of {config.timesteps} env steps")
        print(f"{config.env_id}: {config.run.model}/{config.run.task}, {len(targets)} modules, "
              f"grid {vec.envs[0].unwrapped.grid}, "
              f"{config.env.decisions} decisions x {config.run.steps // config.env.decisions} steps, budget "
              f"{_budget_text(config, training=True)}", flush=True)  # fmt: skip
        remaining = config.timesteps - model.num_timesteps
        done = int(model.num_timesteps)
        if remaining > 0 and not stop:
            callbacks = _callbacks(tracker, config, out, stop)
            model.learn(remaining, callback=callbacks, reset_num_timesteps=state is None,
                        progress_bar=config.progress)  # fmt: skip
            # stopped by a signal: the weights are those of the last update, the steps after it were not learnt
            done = callbacks[1].updated_at if stop else int(model.num_timesteps)
        elif remaining <= 0:
            print(f"checkpoint already at {model.num_timesteps} >= --timesteps {config.timesteps}: nothing to train")
        torch.set_num_threads(threads)
        save_checkpoint(model, out, config, done)
        save_policy(model, out, config, done)
        result = TrainResult(model, out, done)
        if stop:
            result.interrupted = stop.name
            print(f"\n{stop.name}: stopped at {done} of {config.timesteps} env steps; checkpoint and policy saved in "
                  f"{out} (no evaluation). Continue with the same flags and --resume", flush=True)  # fmt: skip
            return result
        summary: dict[str, Any] = {"timesteps_done": done}

        def act(obs: Any, env: Any) -> np.ndarray:
            return model.policy.predict(obs, deterministic=True)[0]

        if config.backend == "sim":
            untrained = PPO(SetActorCriticPolicy, vec, seed=config.run.seed, device="cpu",
                            policy_kwargs=dict(hidden=config.hidden, context=config.context, log_std_init=-1.0))

            def act0(obs: Any, env: Any) -> np.ndarray:
                return untrained.policy.predict(obs, deterministic=True)[0]

            table = sim_budget_table(config, calibration, {"policy": act, "untrained": act0,
                                                           "uniform": uniform_allocator})  # fmt: skip
            result.sim_budgets = table
            print("\nsim evaluation by budget (mean of 3 seeds; reward / final accuracy / share of the cap used)")
            print(f"  {'mean rank':>9} " + " ".join(f"{n:>25}" for n in ("policy", "untrained", "uniform")))
            for r, row in table.items():
                cells = [f"{row[n]['reward']:>9.4f} {row[n]['accuracy']:>7.4f} {row[n]['used']:>7.3f}"
                         for n in ("policy", "untrained", "uniform")]  # fmt: skip
                print(f"  {r:>9} " + " ".join(f"{c:>25}" for c in cells))
            summary.update({f"eval/sim_r{r}_{n}_{k}": v for r, row in table.items() for n, d in row.items()
                            for k, v in d.items()})  # fmt: skip
            result.sim = _versus_uniform(config, "sim", act, calibration, summary, tracker, out, done)
        if config.live_check:
            print(f"\nlive evaluation: one {config.run.steps}-step run of {config.run.model}/{config.run.task} per "
                  f"allocator at {_budget_text(config)} ...", flush=True)  # fmt: skip
            result.live = _versus_uniform(config, "live", act, None, summary, tracker, out, done)
        else:
            print(f"\nlive evaluation skipped (--no_live_check): no live {config.run.model}/{config.run.task} run; "
                  "--live_check runs one per allocator", flush=True)  # fmt: skip
        tracker.log({k: v for k, v in summary.items() if k.startswith("eval/")}, step=done)
        rows = read_metrics(out)
        if any("rollout/ep_reward" in r for r in rows):
            keys = ["rollout/ep_reward", "rollout/ep_reward_quality", "budget/violation", "cost/params"]
            curves = plot_curves(rows, keys, out / "curves.png", title=f"PPO on {config.env_id}")
            tracker.image("curves", curves, step=done)
        tracker.summary(summary)
        print(f"policy -> {out / POLICY_FILE} (+ {POLICY_META})   heatmaps, curves, metrics -> {out}")
        return result
    finally:
        torch.set_num_threads(threads)
        tracker.finish()


def _versus_uniform(config: TrainPolicyConfig, backend: str, act: Callable, calibration: Any, summary: dict[str, Any],
                    tracker: Any, out: Path, done: int) -> dict[str, Any]:  # fmt: skip
    """One deterministic episode of the policy and of uniform LoRA at the fixed budget on ``backend`` ("sim": seed
    + 1, ``rank_heatmap.png``; "live": the run's seed, one fine-tune per allocator, ``rank_heatmap_live.png``):
    prints the table, adds the ``eval/<backend>*`` summary keys and the heatmap; returns ``{"policy", "uniform"}``."""
    live = backend == "live"
    env = make_env(config, backend, calibration, fixed_budget(config))
    table = {name: episode_summary(rollout_episode(env, fn, config.run.seed + (0 if live else 1)))
             for name, fn in (("policy", act), ("uniform", uniform_allocator))}  # fmt: skip
    env.close()
    policy = table["policy"]
    title = (f"policy ranks, live {config.run.model}/{config.run.task} (acc {policy['accuracy']:.3f})" if live
             else f"policy ranks on sim {config.run.model} (reward {policy['reward']:.3f})")  # fmt: skip
    png = plot_rank_heatmap(env.targets, policy["ranks"], out / f"rank_heatmap{'_live' if live else ''}.png",
                            title=title, r_max=config.run.r_max)  # fmt: skip
    tracker.image(f"rank/heatmap{'_live' if live else ''}", png, step=done)
    print_table("live evaluation (deterministic policy vs uniform at the same budget, same seed)" if live
                else "sim evaluation (deterministic policy vs uniform, same seed)", table)  # fmt: skip
    summary.update(flat_summary(f"eval/{backend}", table))
    return table


def _budget_text(config: TrainPolicyConfig, training: bool = False) -> str:
    parts = [f"{k}={v}" for k, v in config.env.budget.to_meta().items() if v is not None]
    if training and config.env.budget_rank_range is not None:
        lo, hi = config.env.budget_rank_range
        parts = [p for p in parts if not p.startswith(("budget_rank", "max_params"))]
        parts.insert(0, f"mean rank drawn per episode from [{lo:g}, {hi:g}]")
    return ", ".join(parts) or "none"


def convert_legacy_checkpoint(out: str | os.PathLike) -> Path:
    """Convert a trusted old ``checkpoint.zip`` (SB3, pickle) in ``out`` to the pickle-free checkpoint files, so
    ``--resume`` continues it. **Runs the code in the zip** (``PPO.load``): only for files the user trusts."""
    from stable_baselines3 import PPO

    out = Path(out)
    state_path = out / CHECKPOINT_STATE
    if not (out / LEGACY_CHECKPOINT_FILE).exists() or not state_path.exists():
        raise SystemExit(f"{out}: no old-format {LEGACY_CHECKPOINT_FILE} + {CHECKPOINT_STATE} to convert")
    old = json.loads(state_path.read_text())
    model = PPO.load(out / LEGACY_CHECKPOINT_FILE, device="cpu")
    config = TrainPolicyConfig.from_dict(old["config"])
    return save_checkpoint(model, out, config, int(old.get("timesteps_done", model.num_timesteps)))

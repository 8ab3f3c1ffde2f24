"""RolloutBudgetEnv: learn how to split a GRPO rollout budget over the prompts of each batch (Knapsack RL).

Li et al. 2025 ("Knapsack RL", liziniu/KnapsackRL): GRPO learns nothing from a prompt whose rollouts all succeed
or all fail (zero advantage), so a fixed budget of rollouts is better spent where groups are likely to be mixed.
One env step is one GRPO round: a batch of prompts is drawn, the agent allocates the round's budget, a backend
runs the rollouts (and, live, the GRPO update) and returns per-prompt rewards.

The env talks to a :class:`RolloutBackend`. :class:`SimBackend` (``rankrl/RolloutBudget-Sim-v0``) is a cheap
population model of latent success rates that move as training progresses; :class:`LiveBackend`
(``rankrl/RolloutBudget-v0``, section LIVE BACKEND below) steps a real
:class:`~rankrl.trainers.grpo_budget.BudgetGRPOTrainer` run round by round from a background thread. Baseline
allocators (uniform, knapsack on estimated p, oracle knapsack on true p, and the ratio oracle) are plain functions
of the history.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rankrl.policies.knapsack import allocate, allocate_uniform, estimate_success_rate, nonzero_group_probability

__all__ = [
    "BASELINES",
    "DIFFICULTY_MIXES",
    "N_GLOBALS",
    "N_ROW_FEATURES",
    "LiveBackend",
    "LiveConfig",
    "PromptHistory",
    "RolloutBackend",
    "RolloutBudgetConfig",
    "RolloutBudgetEnv",
    "SimBackend",
    "SimConfig",
    "allocate_max_effective",
    "baseline_allocation",
    "build_observation",
    "effective_rollout_ratio",
    "group_stats",
    "make_backend",
    "register_envs",
    "scores_to_allocation",
]

#: Difficulty mixes of the sim population: latent p ~ sum_k w_k Beta(a_k, b_k), as (w, a, b) triples.
DIFFICULTY_MIXES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "easy": ((1.0, 3.0, 1.0),),  # mean 0.75: most groups all-correct
    "hard": ((1.0, 0.7, 3.0),),  # mean 0.19: many never-solved prompts
    "mixed": ((0.3, 0.5, 5.0), (0.4, 2.0, 2.0), (0.3, 5.0, 0.5)),  # hard / medium / easy thirds
    "bimodal": ((1.0, 0.3, 0.3),),  # U-shaped, as in real math sets (Knapsack RL Fig. 1)
}
BASELINES = ("uniform", "knapsack", "knapsack_ratio", "oracle", "oracle_ratio")
N_ROW_FEATURES = 8
N_GLOBALS = 3


# ---------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class RolloutBudgetConfig:
    """Env-level settings shared by every backend."""

    prompts_per_round: int = 16
    """P: prompts in each round's batch"""
    max_prompts: int | None = None
    """rows of the observation and action (>= P; padded rows are masked); None means P"""
    rollouts_per_prompt: int = 8
    """budget per round B = P * rollouts_per_prompt (the uniform group size)"""
    n_min: int = 2
    """fewest rollouts any prompt gets (2: GRPO needs a pair for any advantage)"""
    n_max: int = 32
    """most rollouts any prompt gets"""
    rounds: int = 16
    """episode length in rounds (truncated there; the sim never terminates)"""
    history_rounds: int = 3
    """warm start: every prompt's history holds this many uniform rounds before the agent acts"""
    temperature: float = 4.0
    """score -> allocation: weights softmax(temperature * score), so scores in [-1, 1] span e^(2 T)"""
    progress_weight: float = 0.0
    """reward weight of the backend's learning progress (sim: increase of the population's mean p)"""
    prior_alpha: float = 1.0
    """Beta prior pseudo-successes for the posterior features and the knapsack baseline"""
    prior_beta: float = 1.0
    """Beta prior pseudo-failures for the posterior features and the knapsack baseline"""

    def __post_init__(self) -> None:
        for name in ("prompts_per_round", "rollouts_per_prompt", "n_max", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.history_rounds < 0 or self.n_min < 0:
            raise ValueError("history_rounds and n_min must be >= 0")
        if not self.n_min <= self.rollouts_per_prompt <= self.n_max:
            raise ValueError(
                f"need n_min <= rollouts_per_prompt <= n_max, got {self.n_min}, {self.rollouts_per_prompt}, "
                f"{self.n_max}: the budget P * rollouts_per_prompt must be feasible"
            )
        if self.max_prompts is not None and self.max_prompts < self.prompts_per_round:
            raise ValueError(f"max_prompts ({self.max_prompts}) must be >= prompts_per_round")
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        if not (self.prior_alpha > 0 and self.prior_beta > 0):
            raise ValueError("prior_alpha and prior_beta must be > 0")

    @property
    def rows(self) -> int:
        """Observation/action rows: ``max_prompts`` or P."""
        return self.max_prompts or self.prompts_per_round

    @property
    def budget(self) -> int:
        """Rollouts per round B."""
        return self.prompts_per_round * self.rollouts_per_prompt


@dataclass(frozen=True)
class SimConfig:
    """Sim backend: a prompt population whose latent success rates move as GRPO trains.

    Dynamics per round, on logits theta = logit(p): a prompt of the batch whose group was mixed gains
    ``learn_rate * N_i``; every prompt gains ``transfer_rate * effective_ratio`` (generalisation) and takes a
    ``N(0, drift_std)`` step (non-stationarity, so old history goes stale); logits stay in +-``logit_clip``.
    Successes are Binomial(N_i, p_i).
    """

    n_prompts: int = 256
    """population size (episodes draw batches from a shuffled epoch order over it)"""
    difficulty: str = "mixed"
    """initial p mix: one of DIFFICULTY_MIXES (easy, hard, mixed, bimodal)"""
    learn_rate: float = 0.01
    """logit gain per rollout of a prompt whose group had non-zero advantage"""
    transfer_rate: float = 0.02
    """logit gain of every prompt per unit effective-rollout ratio of the round"""
    drift_std: float = 0.03
    """std of every prompt's per-round Gaussian logit random walk"""
    logit_clip: float = 6.0
    """bound on |logit p| (p in [0.0025, 0.9975] by default)"""

    def __post_init__(self) -> None:
        if self.n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1, got {self.n_prompts}")
        if self.difficulty not in DIFFICULTY_MIXES:
            raise ValueError(f"difficulty must be one of {sorted(DIFFICULTY_MIXES)}, got {self.difficulty!r}")
        if min(self.learn_rate, self.transfer_rate, self.drift_std) < 0 or self.logit_clip <= 0:
            raise ValueError("learn_rate, transfer_rate, drift_std must be >= 0 and logit_clip > 0")


# ---------------------------------------------------------------------------------------------- backends
@runtime_checkable
class RolloutBackend(Protocol):
    """What the env needs from whoever runs the rollouts (sim population or a live GRPO trainer)."""

    n_prompts: int

    def reset(self, rng: np.random.Generator) -> None:
        """Start a new run; all randomness comes from ``rng`` (the env's ``np_random``)."""

    def draw_batch(self, size: int) -> np.ndarray:
        """Population indices of the next round's ``size`` prompts."""

    def probe(self, prompt_ids: np.ndarray, allocation: np.ndarray) -> list[np.ndarray]:
        """Rewards in [0, 1] of ``allocation[i]`` rollouts of each prompt, without training (history warm start)."""

    def next_round(self, prompt_ids: np.ndarray, allocation: np.ndarray) -> list[np.ndarray]:
        """Run the round: rollouts per ``allocation``, one GRPO update; per-prompt reward arrays."""

    def progress(self) -> float:
        """Scalar learning-progress level (sim: mean latent p; live: e.g. a running train accuracy)."""

    def success_rates(self, prompt_ids: np.ndarray) -> np.ndarray | None:
        """True success rates (sim, for the oracle and expected metrics) or None (live)."""


class SimBackend:
    """Latent-success-rate population; see :class:`SimConfig` for the dynamics."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.n_prompts = self.config.n_prompts
        self.rng = np.random.default_rng(0)
        self.logits = np.zeros(self.n_prompts)
        self._order = np.arange(0)

    def reset(self, rng: np.random.Generator) -> None:
        self.rng = rng
        mix = DIFFICULTY_MIXES[self.config.difficulty]
        weights = np.array([m[0] for m in mix])
        comp = rng.choice(len(mix), size=self.n_prompts, p=weights / weights.sum())
        a, b = np.array([m[1] for m in mix])[comp], np.array([m[2] for m in mix])[comp]
        p = np.clip(rng.beta(a, b), 1e-6, 1 - 1e-6)
        self.logits = np.clip(np.log(p) - np.log1p(-p), -self.config.logit_clip, self.config.logit_clip)
        self._order = np.arange(0)

    def draw_batch(self, size: int) -> np.ndarray:
        if size > self.n_prompts:
            raise ValueError(f"batch of {size} prompts from a population of {self.n_prompts}")
        if self._order.size < size:  # new epoch: reshuffle, as a dataloader would
            self._order = np.concatenate([self._order, self.rng.permutation(self.n_prompts)])
        batch, self._order = self._order[:size], self._order[size:]
        return batch

    def success_rates(self, prompt_ids: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits[np.asarray(prompt_ids)]))

    def probe(self, prompt_ids: np.ndarray, allocation: np.ndarray) -> list[np.ndarray]:
        alloc = np.asarray(allocation, dtype=np.int64)
        succ = self.rng.binomial(alloc, self.success_rates(prompt_ids))
        # group i = succ[i] ones then zeros (order is irrelevant to GRPO statistics), built without a loop
        pos = np.arange(alloc.sum()) - np.repeat(np.cumsum(alloc) - alloc, alloc)
        flat = (pos < np.repeat(succ, alloc)).astype(np.float64)
        return np.split(flat, np.cumsum(alloc)[:-1])

    def next_round(self, prompt_ids: np.ndarray, allocation: np.ndarray) -> list[np.ndarray]:
        rewards = self.probe(prompt_ids, allocation)
        cfg, ids = self.config, np.asarray(prompt_ids)
        mixed = group_stats(rewards)[2]
        self.logits[ids] += cfg.learn_rate * np.asarray(allocation) * mixed
        self.logits += cfg.transfer_rate * effective_rollout_ratio(rewards)
        self.logits += self.rng.normal(0.0, cfg.drift_std, self.n_prompts) if cfg.drift_std else 0.0
        np.clip(self.logits, -cfg.logit_clip, cfg.logit_clip, out=self.logits)
        return rewards

    def progress(self) -> float:
        return float(np.mean(1.0 / (1.0 + np.exp(-self.logits))))


# ---------------------------------------------------------------------------------------------- LIVE BACKEND
# The live backend runs one real BudgetGRPOTrainer run per episode. TRL's ``trainer.train()`` owns the loop, so it
# runs on a background thread and the trainer's allocator callback is the rendezvous (a coroutine over two queues):
#
#   env thread                                   trainer thread (trainer.train())
#   reset: build trainer, start thread  ----->   sample round k's prompts, call allocator(keys, history, budget)
#          wait on to_env               <-----   allocator: put ("request", keys, last_round); wait
#   draw_batch: ids of the request's keys
#   next_round: put allocation          ----->   allocator returns it; generate, score, GRPO update; round k+1's
#          wait on to_env               <-----   allocator puts ("request", ..., round k's BudgetRound)
#                                                  or train() returns: ("done", last BudgetRound)
#                                                  or train() raises:  ("error", exception)
#
# Only one side runs at a time, so the trainer's state is never read while it changes; the finished round travels
# in the message. close() makes the waiting allocator raise _RunClosed (a BaseException, so no ``except Exception``
# inside TRL or transformers swallows it), which unwinds train(); the thread is then joined.
@dataclass(frozen=True)
class LiveConfig:
    """Live backend (``rankrl/RolloutBudget-v0``): each env step is one round of a real BudgetGRPOTrainer run.

    The GRPO shape comes from :class:`RolloutBudgetConfig`: ``per_device_train_batch_size = prompts_per_round *
    rollouts_per_prompt``, ``num_generations = rollouts_per_prompt``, ``steps_per_generation = 1``, one optimizer
    step per round. Field names avoid the env's own (``temperature``, ``max_prompts``) so keywords route unambiguously.
    """

    model: str = "tiny-qwen"
    """model alias, local directory or hub id (rankrl.models.load_model); a random tiny model never answers, so
    pass a warmed-up checkpoint (benchmarks/rollout_budget_live.py) for mixed groups"""
    task: str = "arith"
    """causal-LM task with numeric answers: 'arith', 'gsm8k' or a path (rankrl.trainers.budget_job.build_dataset)"""
    n_prompts: int = 32
    """prompt pool: at most this many train rows (seeded sample); prompt id i = the pool's row i"""
    max_completion_length: int = 6
    """tokens per completion"""
    learning_rate: float = 1e-4
    """GRPO learning rate"""
    seed: int = 0
    """fixes the pool and a tiny model's initial weights; each run's TRL seed is drawn from the env's np_random"""
    lora_r: int = 0
    """LoRA rank of all linear projections (alpha = 2 r); 0 trains the full model"""
    steps: int | None = None
    """GRPO steps of a run = env rounds; None takes RolloutBudgetConfig.rounds, any other value must equal it"""
    generation_temperature: float = 1.0
    """sampling temperature of the rollouts (GRPOConfig.temperature)"""
    report_to: str = "none"
    """'none', or 'wandb' for TRL's W&B logging (one W&B run per episode; mode from rankrl.tracking.wandb_mode)"""
    output_dir: str | None = None
    """TRL's output_dir (nothing is saved: save_strategy='no'); None uses a temp dir removed when the run ends"""
    timeout_s: float = 600.0
    """longest wait of either thread for the other (a round's training, or the agent's next action), seconds"""

    def __post_init__(self) -> None:
        for name in ("n_prompts", "max_completion_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0: full fine-tune), got {self.lora_r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 or None, got {self.steps}")
        for name in ("learning_rate", "generation_temperature", "timeout_s"):
            value = getattr(self, name)
            if not (value > 0 and np.isfinite(value)):
                raise ValueError(f"{name} must be finite and > 0, got {value}")
        if self.report_to not in ("none", "wandb"):
            raise ValueError(f"report_to must be 'none' or 'wandb', got {self.report_to!r}")


class _RunClosed(BaseException):
    """Raised inside the trainer thread's allocator to end ``train()`` when the env closes the run."""


_STOP = object()  # env -> trainer: stop instead of an allocation


class _LiveRun:
    """One GRPO run on a background thread, driven round by round through its allocator callback."""

    _count = 0

    def __init__(self, make_trainer: Any, *, prompts: int, budget: int, timeout_s: float) -> None:
        self.prompts, self.budget, self.timeout_s = prompts, budget, timeout_s
        self.to_env: queue.Queue = queue.Queue()
        self.to_trainer: queue.Queue = queue.Queue()
        self.closing = threading.Event()
        self.trainer = make_trainer(self.allocate)
        _LiveRun._count += 1
        self.thread = threading.Thread(target=self._train, name=f"rankrl-live-grpo-{_LiveRun._count}", daemon=True)
        self.thread.start()

    def allocate(self, keys: list[str], history: Any, budget: int) -> list[int]:
        """The trainer's allocator (trainer thread): publish the round, block until the env allocates."""
        if self.closing.is_set():
            raise _RunClosed
        if len(keys) != self.prompts or budget != self.budget:
            raise ValueError(
                f"the trainer asked for {len(keys)} prompts with a budget of {budget} rows, but the env allocates "
                f"{self.prompts} prompts and {self.budget} rows per round (a multi-process launch is not supported)"
            )
        self.to_env.put(("request", list(keys), self.trainer.last_round))
        try:
            reply = self.to_trainer.get(timeout=self.timeout_s)
        except queue.Empty:
            raise TimeoutError(
                f"the env gave no allocation within {self.timeout_s:g} s (LiveConfig.timeout_s); the run stops"
            ) from None
        if reply is _STOP:
            raise _RunClosed
        return reply

    def _train(self) -> None:
        try:
            self.trainer.train()
        except _RunClosed:
            return
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the env thread
            self.to_env.put(("error", exc, None))
            return
        self.to_env.put(("done", None, self.trainer.last_round))

    def receive(self, what: str) -> tuple[str, Any, Any]:
        """The trainer's next message (env thread); stops the run on a timeout."""
        try:
            return self.to_env.get(timeout=self.timeout_s)
        except queue.Empty:
            self.stop()
            raise TimeoutError(
                f"the live GRPO run sent nothing for {self.timeout_s:g} s during {what} (raise LiveConfig.timeout_s "
                "for slow models); the run was stopped, reset() starts a new one"
            ) from None

    def stop(self) -> bool:
        """End the run (a waiting allocator raises :class:`_RunClosed`) and join the thread; True if it ended."""
        self.closing.set()
        self.to_trainer.put(_STOP)
        if self.thread is not threading.current_thread():
            self.thread.join(self.timeout_s)
        return not self.thread.is_alive()


class LiveBackend:
    """:class:`RolloutBackend` over a live :class:`~rankrl.trainers.grpo_budget.BudgetGRPOTrainer` run.

    One episode is one GRPO run of ``rounds`` steps on a pool of ``n_prompts`` prompts; the env drives it round by
    round (see the LIVE BACKEND notes above). Prompt ids are the pool's ``prompt_id`` column, so they mean the same
    prompt in every episode.

    * ``reset`` stops any running run and starts a fresh one: the model is reloaded and a new trainer built (tiny
      models: under a second; a real model: its load time, plus TRL's set-up), and the previous run's training is
      discarded. The TRL seed (sampler order, generation) is drawn from the env's ``np_random``.
    * ``probe`` is not available: there is no training-free round, so the live env requires ``history_rounds=0``;
      the history fills from the rounds actually trained.
    * ``next_round`` returns the weighted reward of every rollout, per prompt in the order of ``prompt_ids``;
      unscorable rollouts (NaN) count as 0 and rewards outside [0, 1] raise (PromptHistory counts successes).
    * ``progress`` is the mean, over the pool prompts seen so far in this run, of each prompt's latest success
      fraction (0.0 before the first round): an estimate of the population's mean success rate, like the sim's, with
      every prompt weighted once so the allocation itself does not tilt it. It moves when a batch's prompts are
      re-measured, so a progress reward is noisy and, on a prompt's first visit, also reflects new information.
    * ``success_rates`` is None (unknown live): the oracle baselines are unavailable.
    * ``close`` stops the run, even mid-episode, and joins the thread. An exception in the trainer thread stops the
      run and is re-raised by the env's ``step`` (``RuntimeError`` from the original).

    Args:
        env_config: the env's :class:`RolloutBudgetConfig` (group shape, rounds); see :meth:`check_env_config`.
        config: the :class:`LiveConfig`.
        reward_funcs: TRL reward functions whose weighted sum lies in [0, 1] (default:
            :func:`rankrl.rewards.numeric_answer_reward`).
    """

    def __init__(
        self, env_config: RolloutBudgetConfig, config: LiveConfig | None = None, reward_funcs: Sequence[Any] = ()
    ) -> None:
        from rankrl.models import load_model
        from rankrl.trainers.budget_job import BudgetArgs, build_dataset

        self.config = config or LiveConfig()
        self.env_config = env_config
        self.check_env_config(env_config)
        self.steps = self.config.steps or env_config.rounds
        self.reward_funcs = list(reward_funcs)
        cfg = self.config
        self._loaded = load_model(cfg.model, task_kind="causal_lm", seed=cfg.seed)  # kept for the first run
        args = BudgetArgs(model=cfg.model, task=cfg.task, max_prompts=cfg.n_prompts)
        self.dataset = build_dataset(args, self._loaded.tokenizer, cfg.seed)
        self.keys = [str(k) for k in self.dataset["prompt_id"]]
        self._index = {k: i for i, k in enumerate(self.keys)}
        self.n_prompts = len(self.keys)
        self.finished = False
        self.rounds_done = 0
        self._run: _LiveRun | None = None
        self._pending: list[str] | None = None
        self._last_ids = np.arange(0)
        self._latest = np.full(self.n_prompts, np.nan)
        self._seed = cfg.seed
        self._tmp: str | None = None

    def check_env_config(self, env_config: RolloutBudgetConfig) -> None:
        """Fail unless ``env_config`` is one this backend can run (and, once built, the one it was built for)."""
        c = env_config
        if c.history_rounds:
            raise ValueError(
                f"the live backend has no training-free probe, so history_rounds must be 0 (got {c.history_rounds}); "
                "prompt histories fill from the rounds actually trained"
            )
        if c.n_min < 1:
            raise ValueError(f"the live backend needs n_min >= 1 (TRL generates every prompt), got {c.n_min}")
        if c.rollouts_per_prompt < 2:
            raise ValueError(f"the live backend needs rollouts_per_prompt >= 2, got {c.rollouts_per_prompt}")
        if self.config.steps is not None and self.config.steps != c.rounds:
            raise ValueError(f"LiveConfig.steps ({self.config.steps}) must equal the env's rounds ({c.rounds})")
        mine = getattr(self, "env_config", c)
        shape = ("prompts_per_round", "rollouts_per_prompt", "rounds")
        if any(getattr(c, k) != getattr(mine, k) for k in shape):
            raise ValueError(
                f"this LiveBackend was built for {[(k, getattr(mine, k)) for k in shape]}, the env has "
                f"{[(k, getattr(c, k)) for k in shape]}; build the backend with the env's config"
            )

    @property
    def trainer(self) -> Any:
        """The current run's trainer (None before ``reset``, after ``close`` or after a failure)."""
        return self._run.trainer if self._run is not None else None

    def _make_trainer(self, allocator: Any) -> Any:
        import torch
        from transformers import PrinterCallback
        from trl import GRPOConfig

        from rankrl.models import load_model
        from rankrl.rewards import numeric_answer_reward
        from rankrl.trainers.grpo_budget import BudgetGRPOTrainer

        cfg, env = self.config, self.env_config
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            loaded = load_model(cfg.model, task_kind="causal_lm", seed=cfg.seed)
        if cfg.report_to == "wandb":
            from rankrl.tracking import wandb_mode

            os.environ.setdefault("WANDB_MODE", wandb_mode())
        out = cfg.output_dir or self._tmp
        args = GRPOConfig(
            output_dir=out, max_steps=self.steps, per_device_train_batch_size=env.budget,
            num_generations=env.rollouts_per_prompt, steps_per_generation=1,
            max_completion_length=cfg.max_completion_length, temperature=cfg.generation_temperature,
            learning_rate=cfg.learning_rate, seed=self._seed, use_cpu=not torch.cuda.is_available(), bf16=False,
            report_to=cfg.report_to, logging_steps=1, save_strategy="no", activation_checkpointing=False,
            disable_tqdm=True,
        )  # fmt: skip
        peft_config = None
        if cfg.lora_r:
            from peft import LoraConfig

            peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear",
                                     task_type="CAUSAL_LM")  # fmt: skip
        trainer = BudgetGRPOTrainer(
            model=loaded.model, processing_class=loaded.tokenizer, args=args, train_dataset=self.dataset,
            reward_funcs=self.reward_funcs or numeric_answer_reward, peft_config=peft_config, allocator=allocator,
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # a dict per round on stdout; report_to gets the metrics
        return trainer

    def reset(self, rng: np.random.Generator) -> None:
        self.close()
        self._seed = int(rng.integers(2**31 - 1))
        self._tmp = None if self.config.output_dir else tempfile.mkdtemp(prefix="rankrl-live-grpo-")
        self.finished, self.rounds_done, self._pending = False, 0, None
        self._latest = np.full(self.n_prompts, np.nan)
        try:
            self._run = _LiveRun(self._make_trainer, prompts=self.env_config.prompts_per_round,
                                 budget=self.env_config.budget, timeout_s=self.config.timeout_s)  # fmt: skip
        except BaseException:
            self._cleanup()
            raise
        self._receive("the run's set-up and first batch")
        if self._pending is None:
            raise RuntimeError("the live GRPO run ended before its first round")

    def _receive(self, what: str) -> Any:
        """Wait for the trainer's next message; returns the BudgetRound it carries (the round just finished)."""
        run = self._run
        if run is None:
            raise RuntimeError("the live backend has no run: call reset() first")
        try:
            kind, payload, finished = run.receive(what)
        except TimeoutError:  # receive() has stopped the run
            self._run = None
            self._cleanup()
            raise
        if kind == "request":
            self._pending = payload
        elif kind == "done":
            self.finished = True
            run.thread.join(run.timeout_s)
        else:  # "error": the thread has ended
            run.thread.join(run.timeout_s)
            self._run = None
            self._cleanup()
            raise RuntimeError(
                f"the live GRPO run failed during {what}: {type(payload).__name__}: {payload}. The trainer thread "
                "has stopped; reset() starts a new run"
            ) from payload
        return finished

    def draw_batch(self, size: int) -> np.ndarray:
        if self.finished:  # the episode has ended (truncated): the last batch stands in for the final observation
            return self._last_ids.copy()
        if self._pending is None:
            raise RuntimeError("no pending GRPO round: call reset() first")
        if size != len(self._pending):
            raise ValueError(f"the trainer's rounds hold {len(self._pending)} prompts, asked for {size}")
        self._last_ids = np.array([self._index[k] for k in self._pending], dtype=np.int64)
        return self._last_ids.copy()

    def probe(self, prompt_ids: np.ndarray, allocation: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError(
            "the live backend cannot probe without training; use history_rounds=0 (histories fill from trained rounds)"
        )

    def next_round(self, prompt_ids: np.ndarray, allocation: np.ndarray) -> list[np.ndarray]:
        if self.finished:
            raise RuntimeError(f"the live GRPO run has finished its {self.steps} rounds; reset() starts a new one")
        if self._run is None or self._pending is None:
            raise RuntimeError("no pending GRPO round: call reset() first")
        keys = self._pending
        ids = np.asarray(prompt_ids, dtype=np.int64).ravel()
        if ids.tolist() != [self._index[k] for k in keys]:
            raise ValueError(f"prompt_ids {ids.tolist()} are not the pending round's batch (from draw_batch)")
        counts = [int(n) for n in np.asarray(allocation).ravel()]
        if len(counts) != len(keys):
            raise ValueError(f"need one rollout count per prompt ({len(keys)}), got {len(counts)}")
        self._pending = None
        self._run.to_trainer.put(counts)
        done = self._receive(f"GRPO round {self.rounds_done + 1}/{self.steps}")
        if done.keys != keys or done.counts != counts:
            raise RuntimeError(
                f"the trainer generated counts {done.counts} for prompts {done.keys}, not the allocation {counts} "
                f"for {keys}: the trainer and the env are out of step"
            )
        rewards = [np.nan_to_num(np.asarray(r, dtype=np.float64), nan=0.0) for r in done.rewards]
        flat = np.concatenate(rewards)
        if flat.min() < 0.0 or flat.max() > 1.0:
            raise ValueError(
                f"live rewards must lie in [0, 1] (PromptHistory counts successes), got [{flat.min()}, {flat.max()}]; "
                "use reward functions (and weights) whose total stays in [0, 1]"
            )
        self._latest[ids] = [r.mean() for r in rewards]
        self.rounds_done += 1
        return rewards

    def progress(self) -> float:
        seen = ~np.isnan(self._latest)
        return float(self._latest[seen].mean()) if seen.any() else 0.0

    def success_rates(self, prompt_ids: np.ndarray) -> None:
        return None

    def close(self) -> None:
        """Stop the current run (mid-episode too) and join its thread; idempotent."""
        run, self._run, self._pending = self._run, None, None
        if run is not None and not run.stop():
            warnings.warn(f"live GRPO thread {run.thread.name} did not stop in {run.timeout_s:g} s", stacklevel=2)
        self._cleanup()

    def __del__(self) -> None:
        # Unreferenced without close(): signal the run to stop (no join here; the thread is a daemon).
        run = getattr(self, "_run", None)
        if run is not None:
            run.closing.set()
            run.to_trainer.put(_STOP)

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def make_backend(
    backend: str | RolloutBackend,
    sim: SimConfig | None = None,
    *,
    live: LiveConfig | None = None,
    config: RolloutBudgetConfig | None = None,
) -> RolloutBackend:
    """Backend by name ("sim", or "live" with the env's ``config``) or an instance passed through."""
    if isinstance(backend, str):
        if backend == "sim":
            return SimBackend(sim)
        if backend == "live":
            if config is None:
                raise ValueError("the live backend needs the env's RolloutBudgetConfig (config=...)")
            return LiveBackend(config, live)
        raise ValueError(f"unknown backend {backend!r}: 'sim', 'live', or pass a RolloutBackend instance")
    if not isinstance(backend, RolloutBackend):
        raise TypeError(f"backend must be 'sim', 'live' or implement RolloutBackend, got {type(backend).__name__}")
    return backend


# ---------------------------------------------------------------------------------------------- pure functions
def group_stats(rewards: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group (size, reward sum, mixed) where mixed = at least two rollouts with different rewards."""
    sizes = np.fromiter((np.size(r) for r in rewards), dtype=np.int64, count=len(rewards))
    sums, mixed = np.zeros(sizes.size), np.zeros(sizes.size, dtype=bool)
    full = np.flatnonzero(sizes)
    if full.size:
        flat = np.concatenate([np.asarray(rewards[i], dtype=np.float64).ravel() for i in full])
        starts = np.cumsum(sizes[full]) - sizes[full]
        sums[full] = np.add.reduceat(flat, starts)
        mixed[full] = np.maximum.reduceat(flat, starts) > np.minimum.reduceat(flat, starts)
    return sizes, sums, mixed


def effective_rollout_ratio(rewards: Sequence[np.ndarray]) -> float:
    """Fraction of a round's rollouts that sit in groups with non-zero reward variance (non-zero advantage).

    Example:
        >>> effective_rollout_ratio([np.array([1, 0, 1]), np.array([1, 1]), np.array([0, 0, 0, 0, 0])])
        0.3
    """
    sizes, _, mixed = group_stats(rewards)
    if sizes.sum() == 0:
        raise ValueError("the round has no rollouts")
    return float((sizes * mixed).sum() / sizes.sum())


def scores_to_allocation(scores: np.ndarray, budget: int, n_min: int, n_max: int, temperature: float) -> np.ndarray:
    """Map per-prompt scores to an integer allocation that spends ``budget`` exactly within [n_min, n_max].

    Weights ``w = softmax(temperature * clip(score, -1, 1))`` (NaN scores count as 0). The spare budget
    ``budget - P * n_min`` is split in proportion to ``w``; shares above ``n_max`` are capped and their excess
    re-split over the uncapped prompts in proportion to ``w`` (water-filling). Real targets are floored and the
    remaining units go to the largest fractional parts (largest remainder), lower index first on ties, only to
    prompts below ``n_max``. Equal scores give the most even split.

    Example:
        >>> scores_to_allocation(np.array([1.0, 0.0, -1.0]), 24, 2, 16, 4.0).tolist()
        [16, 6, 2]
    """
    s = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0), -1.0, 1.0)
    n = s.size
    if not n * n_min <= budget <= n * n_max:
        raise ValueError(f"budget {budget} infeasible for {n} prompts in [{n_min}, {n_max}]")
    z = temperature * s
    w = np.exp(z - z.max())
    target = np.full(n, float(n_min))
    free = np.ones(n, dtype=bool)
    spare = float(budget - n * n_min)
    for _ in range(n):  # water-filling: at most n prompts can hit the cap
        share = np.where(free, spare * w / w[free].sum(), 0.0)
        over = free & (n_min + share > n_max)
        if not over.any():
            target[free] = n_min + share[free]
            break
        target[over] = n_max
        spare -= float((n_max - n_min) * over.sum())
        free &= ~over
    alloc = np.clip(np.floor(target + 1e-9), n_min, n_max).astype(np.int64)
    rest = budget - int(alloc.sum())
    frac = target - alloc
    if rest > 0:
        order = np.lexsort((np.arange(n), -frac))
        order = order[alloc[order] < n_max]
        alloc[order[:rest]] += 1
    elif rest < 0:  # float round-off only: take back from the smallest fractions above n_min
        order = np.lexsort((np.arange(n), frac))
        order = order[alloc[order] > n_min]
        alloc[order[:-rest]] -= 1
    return alloc


def allocate_max_effective(p: np.ndarray, budget: int, n_min: int, n_max: int) -> np.ndarray:
    """Exact maximiser of the expected effective rollouts ``sum_i N_i (1 - p_i^N_i - (1-p_i)^N_i)`` (DP).

    The knapsack value weights groups by p(1-p)^2; this reference ("ratio oracle") optimises the metric the env
    rewards. O(P * budget * n_max).
    """
    p = np.asarray(p, dtype=np.float64)
    counts = np.arange(n_min, n_max + 1)
    gain = counts[None, :] * nonzero_group_probability(counts[None, :], p[:, None])
    best = np.full(budget + 1, -np.inf)
    best[0] = 0.0
    choice = np.zeros((p.size, budget + 1), dtype=np.int64)
    # cand[j, s] = best[s - counts[j]] + gain[i, j], read from a copy of best with n_max -inf's in front
    idx = np.arange(budget + 1)[None, :] - counts[:, None] + n_max
    padded = np.full(budget + 1 + n_max, -np.inf)
    cols = np.arange(budget + 1)
    for i in range(p.size):
        padded[n_max:] = best
        cand = padded[idx] + gain[i][:, None]
        pick = cand.argmax(axis=0)  # first maximum: the fewest rollouts on ties
        best, choice[i] = cand[pick, cols], counts[pick]
    if not np.isfinite(best[budget]):
        raise ValueError(f"budget {budget} infeasible for {p.size} prompts in [{n_min}, {n_max}]")
    out, left = np.zeros(p.size, dtype=np.int64), budget
    for i in range(p.size - 1, -1, -1):
        out[i] = choice[i, left]
        left -= out[i]
    return out


def baseline_allocation(
    name: str,
    *,
    successes: np.ndarray,
    trials: np.ndarray,
    budget: int,
    n_min: int,
    n_max: int,
    true_p: np.ndarray | None = None,
    prior: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Allocation by one of :data:`BASELINES` from a batch's history counts.

    * ``uniform``: the most even split.
    * ``knapsack``: Knapsack RL's :func:`~rankrl.policies.knapsack.allocate` on Beta-posterior-mean p.
    * ``knapsack_ratio``: :func:`allocate_max_effective` (the env's own objective) on the same estimates.
    * ``oracle`` / ``oracle_ratio``: the same two on the true p (``true_p``, sim only).
    """
    n = np.asarray(trials).size
    if name == "uniform":
        return allocate_uniform(n, budget, n_min, n_max)
    if name in ("knapsack", "knapsack_ratio"):
        fn = allocate if name == "knapsack" else allocate_max_effective
        return fn(estimate_success_rate(successes, trials, *prior), budget, n_min, n_max)
    if name in ("oracle", "oracle_ratio"):
        if true_p is None:
            raise ValueError(f"the {name} baseline needs true success rates (sim backend only)")
        fn = allocate if name == "oracle" else allocate_max_effective
        return fn(np.asarray(true_p), budget, n_min, n_max)
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")


# ---------------------------------------------------------------------------------------------- history
class PromptHistory:
    """Per-prompt reward record of a population: trials, successes, last-round fraction, last round seen."""

    def __init__(self, n_prompts: int) -> None:
        self.trials = np.zeros(n_prompts)
        self.successes = np.zeros(n_prompts)
        self.last_frac = np.zeros(n_prompts)
        self.last_seen = np.full(n_prompts, -1_000_000, dtype=np.int64)  # "never"

    def record(self, prompt_ids: np.ndarray, rewards: Sequence[np.ndarray], round_idx: int) -> None:
        """Add one round of rewards (each in [0, 1]) of ``prompt_ids``, seen at ``round_idx``."""
        ids = np.asarray(prompt_ids)
        sizes, sums, _ = group_stats(rewards)
        if ids.size != sizes.size or np.unique(ids).size != ids.size:
            raise ValueError("need one reward array per prompt id and distinct ids")
        seen = sizes > 0
        ids, sizes, sums = ids[seen], sizes[seen], sums[seen]
        self.trials[ids] += sizes
        self.successes[ids] += sums
        self.last_frac[ids] = sums / sizes
        self.last_seen[ids] = round_idx


def _beta_moment(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """E[p^k] for p ~ Beta(a, b): prod_{j<k} (a + j) / (a + b + j)."""
    out = np.ones_like(a)
    for j in range(k):
        out *= (a + j) / (a + b + j)
    return out


def build_observation(
    history: PromptHistory,
    prompt_ids: np.ndarray,
    *,
    round_idx: int,
    horizon: int,
    budget: int,
    config: RolloutBudgetConfig,
) -> dict[str, np.ndarray]:
    """Set observation of a batch (shared by the env and the learned :class:`~rankrl.policies.budget_policy.Allocator`).

    Rows (one per prompt, all in [0, 1]): log1p(trials)/log(1025); Beta posterior mean; 2 x posterior std;
    last-round success fraction; rounds since last seen / horizon (1 if never); never seen; posterior
    probability of a mixed group at ``rollouts_per_prompt``; the knapsack rule's share (N - n_min) /
    (n_max - n_min), so the policy can learn corrections to it. Globals: round / horizon, (budget / P) / n_max,
    P / rows.
    """
    ids = np.asarray(prompt_ids)
    n, rows = ids.size, config.rows
    if n > rows:
        raise ValueError(f"{n} prompts do not fit the policy's {rows} rows")
    t, s = history.trials[ids], history.successes[ids]
    a, b = s + config.prior_alpha, t - s + config.prior_beta
    mean = a / (a + b)
    std = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    seen = history.last_seen[ids] > -1_000_000
    since = np.where(seen, (round_idx - history.last_seen[ids]) / max(horizon, 1), 1.0)
    k = config.rollouts_per_prompt
    p_mixed = 1.0 - _beta_moment(a, b, k) - _beta_moment(b, a, k)
    knap = (allocate(mean, budget, config.n_min, config.n_max) - config.n_min) / max(config.n_max - config.n_min, 1)
    feats = np.stack(
        [np.log1p(t) / np.log(1025.0), mean, 2 * std, history.last_frac[ids], since, ~seen, p_mixed, knap], axis=1
    )
    out_rows = np.zeros((rows, N_ROW_FEATURES), dtype=np.float32)
    out_rows[:n] = np.clip(feats, 0.0, 1.0)
    mask = np.zeros(rows, dtype=np.float32)
    mask[:n] = 1.0
    glob = np.array([round_idx / max(horizon, 1), budget / n / config.n_max, n / rows], dtype=np.float32)
    return {"rows": out_rows, "mask": mask, "globals": np.clip(glob, 0.0, 1.0)}


# ---------------------------------------------------------------------------------------------- the env
class RolloutBudgetEnv(gym.Env):
    """Split each GRPO round's rollout budget over its prompts to maximise the effective-rollout ratio.

    ## Action Space
    ``Box(-1, 1, (rows,), float32)``: one score per prompt row (padded rows ignored). Scores become an integer
    allocation with :func:`scores_to_allocation`: ``softmax(temperature * score)`` shares of the spare budget
    on top of ``n_min``, capped at ``n_max`` with water-filling, largest-remainder rounding; it always sums
    to ``B = P * rollouts_per_prompt``. :meth:`step_allocation` takes an integer allocation directly
    (baselines).

    ## Observation Space
    ``Dict(rows=Box(0, 1, (rows, 8)), mask=Box(0, 1, (rows,)), globals=Box(0, 1, (3,)))``: per-prompt history
    features and the batch's mask, see :func:`build_observation`.

    ## Rewards
    Effective rollout ratio of the round: rollouts in groups with non-zero reward variance / all rollouts, plus
    ``progress_weight`` times the increase of ``backend.progress()`` (sim: population mean p).

    ## Episode End
    Truncated after ``rounds`` rounds, or when the backend reports its run ``finished`` (live: the GRPO run has
    ``steps == rounds`` steps, so both coincide). Never terminated.

    ## Arguments
    ``backend`` ("sim", "live" or a :class:`RolloutBackend`), ``config`` / ``sim`` / ``live`` dataclasses, or their
    fields as keyword arguments (``gym.make("rankrl/RolloutBudget-Sim-v0", difficulty="hard", history_rounds=1)``,
    ``gym.make("rankrl/RolloutBudget-v0", model="path/to/checkpoint", rounds=8)``); unknown keywords, and another
    backend's keywords, raise ``ValueError``. The live backend needs ``history_rounds=0``, its default when no
    ``config`` is given. ``info`` holds the allocation, prompt ids, the realised ratio, the fraction of non-zero
    groups and, in sim, the expected ratio under the true p. ``close()`` closes the backend (live: stops the run).

    ## Version History
    * v0: initial version (sim backend); live backend (:class:`LiveBackend`) added with the same spaces and reward.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        backend: str | RolloutBackend = "sim",
        config: RolloutBudgetConfig | None = None,
        sim: SimConfig | None = None,
        render_mode: str | None = None,
        live: LiveConfig | None = None,
        **overrides: Any,
    ) -> None:
        env_keys = {f.name for f in fields(RolloutBudgetConfig)}
        backend_keys = {"sim": {f.name for f in fields(SimConfig)}, "live": {f.name for f in fields(LiveConfig)}}
        unknown = set(overrides) - env_keys - backend_keys["sim"] - backend_keys["live"]
        if unknown:
            valid = env_keys | backend_keys["sim"] | backend_keys["live"]
            raise ValueError(f"unknown RolloutBudgetEnv arguments {sorted(unknown)}; valid: {sorted(valid)}")
        name = backend if isinstance(backend, str) else None
        env_over = {k: v for k, v in overrides.items() if k in env_keys}
        own_over = {k: v for k, v in overrides.items() if k in backend_keys.get(name, set()) and k not in env_keys}
        stray = sorted(set(overrides) - set(env_over) - set(own_over))
        if stray:
            raise ValueError(f"arguments {stray} belong to another backend's config, not to backend {backend!r}")
        if live is not None and name != "live":
            raise ValueError(f"a LiveConfig was given for backend {backend!r}")
        if name == "live" and config is None:
            env_over.setdefault("history_rounds", 0)  # no training-free probe live: see LiveBackend
        self.config = RolloutBudgetConfig(**({**_asdict(config), **env_over} if config else env_over))
        if name == "live":
            live_cfg = LiveConfig(**({**_asdict(live), **own_over} if live else own_over))
            self.backend = make_backend(backend, live=live_cfg, config=self.config)
        else:
            self.backend = make_backend(backend, SimConfig(**({**_asdict(sim), **own_over} if sim else own_over)))
        if isinstance(self.backend, LiveBackend):
            self.backend.check_env_config(self.config)
        if self.config.prompts_per_round > self.backend.n_prompts:
            raise ValueError(
                f"prompts_per_round ({self.config.prompts_per_round}) > population ({self.backend.n_prompts})"
            )
        if render_mode is not None:
            raise ValueError("RolloutBudgetEnv has no render modes")
        self.render_mode = render_mode
        rows = self.config.rows
        self.action_space = spaces.Box(-1.0, 1.0, (rows,), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "rows": spaces.Box(0.0, 1.0, (rows, N_ROW_FEATURES), dtype=np.float32),
                "mask": spaces.Box(0.0, 1.0, (rows,), dtype=np.float32),
                "globals": spaces.Box(0.0, 1.0, (N_GLOBALS,), dtype=np.float32),
            }
        )
        self.history = PromptHistory(self.backend.n_prompts)
        self.round = 0
        self.batch = np.arange(0)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        cfg = self.config
        self.backend.reset(self.np_random)
        self.history = PromptHistory(self.backend.n_prompts)
        everyone = np.arange(self.backend.n_prompts)
        uniform = np.full(everyone.size, cfg.rollouts_per_prompt)
        for _ in range(cfg.history_rounds):  # warm start: uniform past rounds, stamped as seen just before
            self.history.record(everyone, self.backend.probe(everyone, uniform), round_idx=-1)
        self.round = 0
        self.batch = self.backend.draw_batch(cfg.prompts_per_round)
        return self._obs(), {"prompt_ids": self.batch.copy()}

    def _obs(self) -> dict[str, np.ndarray]:
        return build_observation(
            self.history, self.batch, round_idx=self.round, horizon=self.config.rounds,
            budget=self.config.budget, config=self.config,
        )  # fmt: skip

    def action_to_allocation(self, action: np.ndarray) -> np.ndarray:
        """Integer allocation of the current batch for a score action (see the class docstring)."""
        cfg = self.config
        scores = np.asarray(action, dtype=np.float64).reshape(-1)[: self.batch.size]
        return scores_to_allocation(scores, cfg.budget, cfg.n_min, cfg.n_max, cfg.temperature)

    def baseline_allocation(self, name: str) -> np.ndarray:
        """Allocation of the current batch by one of :data:`BASELINES`."""
        cfg = self.config
        return baseline_allocation(
            name, successes=self.history.successes[self.batch], trials=self.history.trials[self.batch],
            budget=cfg.budget, n_min=cfg.n_min, n_max=cfg.n_max,
            true_p=self.backend.success_rates(self.batch), prior=(cfg.prior_alpha, cfg.prior_beta),
        )  # fmt: skip

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        return self.step_allocation(self.action_to_allocation(action))

    def step_allocation(self, allocation: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """Run one round with an explicit integer allocation (must spend B exactly within the bounds)."""
        cfg = self.config
        alloc = np.asarray(allocation, dtype=np.int64)
        if alloc.shape != self.batch.shape or alloc.sum() != cfg.budget:
            raise ValueError(f"allocation must have shape {self.batch.shape} and sum {cfg.budget}, got {alloc}")
        if alloc.min() < cfg.n_min or alloc.max() > cfg.n_max:
            raise ValueError(f"allocation outside [{cfg.n_min}, {cfg.n_max}]: {alloc}")
        true_p = self.backend.success_rates(self.batch)
        before = self.backend.progress()
        rewards = self.backend.next_round(self.batch, alloc)
        self.history.record(self.batch, rewards, self.round)
        sizes, _, mixed = group_stats(rewards)
        ratio = float((sizes * mixed).sum() / sizes.sum())
        progress = self.backend.progress() - before
        info: dict[str, Any] = {
            "allocation": alloc,
            "prompt_ids": self.batch.copy(),
            "effective_ratio": ratio,
            "frac_nonzero_groups": float(mixed.mean()),
            "progress": progress,
        }
        if true_p is not None:
            p_mixed = nonzero_group_probability(alloc, true_p)
            info["expected_effective_ratio"] = float((alloc * p_mixed).sum() / alloc.sum())
        self.round += 1
        truncated = self.round >= cfg.rounds or bool(getattr(self.backend, "finished", False))
        self.batch = self.backend.draw_batch(cfg.prompts_per_round)
        return self._obs(), float(ratio + cfg.progress_weight * progress), False, truncated, info

    def close(self) -> None:
        """Close the backend if it can be (live: stop the GRPO run and join its thread)."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
        super().close()


def _asdict(cfg: object) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}  # shallow, unlike dataclasses.asdict


def register_envs() -> None:
    """Register ``rankrl/RolloutBudget-Sim-v0`` and ``rankrl/RolloutBudget-v0`` (live) with Gymnasium (idempotent)."""
    for env_id, backend in (("rankrl/RolloutBudget-Sim-v0", "sim"), ("rankrl/RolloutBudget-v0", "live")):
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="rankrl.envs.rollout_budget:RolloutBudgetEnv",
                kwargs={"backend": backend},
            )

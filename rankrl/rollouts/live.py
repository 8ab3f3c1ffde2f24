"""Live backend of ``rankrl/RolloutBudget-v0``: each env step is one round of a real
:class:`~rankrl.rollouts.grpo.RolloutGRPOTrainer` run, driven from a background thread.

Split from :mod:`rankrl.rollouts.env`, which imports it only for ``backend="live"`` (so the sim env never loads
torch or TRL); its config, :class:`~rankrl.rollouts.config.LiveConfig`, lives in :mod:`rankrl.rollouts.config`.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from rankrl.rollouts.config import LiveConfig, RolloutBudgetConfig
from rankrl.rollouts.data import build_dataset

__all__ = ["LiveBackend", "LiveConfig"]

# ---------------------------------------------------------------------------------------------- LIVE BACKEND
# The live backend runs one real RolloutGRPOTrainer run per episode. TRL's ``trainer.train()`` owns the loop, so it
# runs on a background thread and the trainer's allocator callback is the rendezvous (a coroutine over two queues):
#
#   env thread                                   trainer thread (trainer.train())
#   reset: build trainer, start thread  ----->   sample round k's prompts, call allocator(keys, history, budget)
#          wait on to_env               <-----   allocator: put ("request", keys, last_round); wait
#   draw_batch: ids of the request's keys
#   next_round: put allocation          ----->   allocator returns it; generate, score, GRPO update; round k+1's
#          wait on to_env               <-----   allocator puts ("request", ..., round k's RolloutRound)
#                                                  or train() returns: ("done", last RolloutRound)
#                                                  or train() raises:  ("error", exception)
#
# Only one side runs at a time, so the trainer's state is never read while it changes; the finished round travels
# in the message. close() makes the waiting allocator raise _RunClosed (a BaseException, so no ``except Exception``
# inside TRL or transformers swallows it), which unwinds train(); the thread is then joined.
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
    """:class:`RolloutBackend` over a live :class:`~rankrl.rollouts.grpo.RolloutGRPOTrainer` run.

    One episode is one GRPO run of ``rounds`` steps on a pool of ``n_prompts`` prompts; the env drives it round by
    round (see the LIVE BACKEND notes above). Prompt ids are the pool's ``prompt_id`` column, so they mean the same
    prompt in every episode.

    * ``reset`` stops any running run and starts a fresh one: the model is reloaded and a new trainer built (tiny
      models: under a second; a real model: its load time, plus TRL's set-up), and the previous run's training is
      discarded. The TRL seed (sampler order, generation) is drawn from the env's ``np_random``.
    * ``probe`` is not available: there is no training-free round, so the live env requires ``history_rounds=0``;
      the history fills from the rounds actually trained.
    * ``next_round`` returns the weighted reward of every rollout, per prompt in the order of ``prompt_ids``;
      unscorable rollouts (NaN) count as 0 and rewards outside [0, 1] raise (RolloutHistory counts successes).
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

        self.config = config or LiveConfig()
        self.env_config = env_config
        self.check_env_config(env_config)
        self.steps = self.config.steps or env_config.rounds
        self.reward_funcs = list(reward_funcs)
        cfg = self.config
        self._loaded = load_model(cfg.model, task_kind="causal_lm", seed=cfg.seed)  # kept for the first run
        self.dataset = build_dataset(cfg.task, self._loaded.tokenizer, cfg.seed, max_prompts=cfg.n_prompts,
                                     model=cfg.model)  # fmt: skip
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
        from rankrl.rollouts.grpo import RolloutGRPOTrainer

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
        trainer = RolloutGRPOTrainer(
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
        """Wait for the trainer's next message; returns the RolloutRound it carries (the round just finished)."""
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
                f"live rewards must lie in [0, 1] (RolloutHistory counts successes), got [{flat.min()}, {flat.max()}]; "
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



"""Configs of the rollout-allocation env and its backends (``RolloutBudgetConfig``, ``SimConfig``, ``LiveConfig``).

The env (:mod:`rankrl.rollouts.env`), the sim (:mod:`rankrl.rollouts.sim`) and the live backend
(:mod:`rankrl.rollouts.live`) all read these; keeping them here lets each import the configs without importing the
others (the env only loads the live backend, and with it TRL, when ``backend="live"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DIFFICULTY_MIXES", "LiveConfig", "RolloutBudgetConfig", "SimConfig"]

#: Difficulty mixes of the sim population: latent p ~ sum_k w_k Beta(a_k, b_k), as (w, a, b) triples.
DIFFICULTY_MIXES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "easy": ((1.0, 3.0, 1.0),),  # mean 0.75: most groups all-correct
    "hard": ((1.0, 0.7, 3.0),),  # mean 0.19: many never-solved prompts
    "mixed": ((0.3, 0.5, 5.0), (0.4, 2.0, 2.0), (0.3, 5.0, 0.5)),  # hard / medium / easy thirds
    "bimodal": ((1.0, 0.3, 0.3),),  # U-shaped, as in real math sets (Knapsack RL Fig. 1)
}


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


@dataclass(frozen=True)
class LiveConfig:
    """Live backend (``rankrl/RolloutBudget-v0``): each env step is one round of a real RolloutGRPOTrainer run.

    The GRPO shape comes from :class:`RolloutBudgetConfig`: ``per_device_train_batch_size = prompts_per_round *
    rollouts_per_prompt``, ``num_generations = rollouts_per_prompt``, ``steps_per_generation = 1``, one optimizer
    step per round. Field names avoid the env's own (``temperature``, ``max_prompts``) so keywords route unambiguously.
    """

    model: str = "tiny-qwen"
    """model alias, local directory or hub id (rankrl.models.load_model); a random tiny model never answers, so
    pass a warmed-up checkpoint (benchmarks/rollout_budget_live.py) for mixed groups"""
    task: str = "arith"
    """causal-LM task with numeric answers: 'arith', 'gsm8k' or a path (rankrl.rollouts.job.build_dataset)"""
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

"""The sim backend of ``rankrl/RolloutBudget-Sim-v0``: a prompt population whose latent success rates move as
GRPO trains (dynamics in :class:`~rankrl.rollouts.config.SimConfig`). Pure numpy; cheap enough for PPO to take
thousands of env steps. Its parameters can be fitted to live runs (:mod:`rankrl.rollouts.calibrate`).
"""

from __future__ import annotations

import numpy as np

from rankrl.rollouts.config import DIFFICULTY_MIXES, SimConfig
from rankrl.rollouts.history import effective_rollout_ratio, group_stats

__all__ = ["SimBackend"]


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

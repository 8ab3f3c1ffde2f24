"""AttentionRankEnv (``rankrl/AttentionRank-v0``): choose the rank of every factorized projection of a pretrained
model for inference, under a FLOP budget, and get the real quality of that model back (DR-RL).

Every decision is cheap to evaluate for real: the SVD of every module is computed once (:class:`Spectra`), a
decision swaps :class:`~rankrl.compress.factorize.LowRankLinear` modules built by slicing into the model, scores a
few held-out batches and swaps the dense modules back. So the env has only a live backend, no surrogate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rankrl.compress.allocate import Module, budget_flops, ranks_flops, ranks_from_shares
from rankrl.targets import KINDS

__all__ = ["GLOBAL_NAMES", "ROW_NAMES", "AttentionRankConfig", "AttentionRankEnv", "shares_from_action"]

#: per-module feature row, in order (model-agnostic: a policy trained on one model runs on another)
ROW_NAMES: tuple[str, ...] = (*(f"kind_{k}" for k in KINDS), "depth", "log_in", "log_out", "cost_share",
                              "energy_1_16", "energy_1_8", "energy_1_4", "energy_1_2", "act_spread")  # fmt: skip
#: global features: the budget as a fraction of the dense FLOPs, and log(module count) / 5
GLOBAL_NAMES: tuple[str, ...] = ("budget", "log_modules")
QUALITIES = ("auto", "perplexity", "embedding")
#: packaged encoders: quality "auto" scores them by embedding fidelity (everything else by perplexity)
ENCODERS = ("minilm", "tiny-bert")
#: shares = softmax(SHARE_TEMPERATURE * action): the action's [-1, 1] spans shares ~e^8 apart
SHARE_TEMPERATURE = 4.0


@dataclass(frozen=True)
class AttentionRankConfig:
    """One model, its factorized projections, the budget range and how quality is measured."""

    model: str = "smollm2"
    """model alias, local directory or hub id"""
    kinds: tuple[str, ...] = ("q", "k", "v", "o")
    """projection kinds to factorize (add 'gate', 'up', 'down' for the MLP)"""
    budget_range: tuple[float, float] = (0.3, 0.7)
    """each episode's FLOP budget, a fraction of the dense FLOPs of those projections, drawn uniformly"""
    activation_aware: bool = True
    """ASVD: scale each weight's input channels by mean |activation|^0.5 before the SVD"""
    texts: str = "default"
    """text to calibrate and score on: 'default' (embedded task) or a task path (e.g. ../shared/data/gsm8k)"""
    calib_batches: int = 2
    """batches for the activation statistics"""
    eval_batches: int = 2
    """held-out batches scored at every decision"""
    batch_size: int = 8
    """rows per batch"""
    max_length: int = 64
    """tokens per row"""
    quality: str = "auto"
    """'perplexity' (causal LMs), 'embedding' (encoders: mean-pooled cosine to the dense model) or 'auto' (embedding
    for the packaged encoders minilm / tiny-bert, perplexity otherwise)"""
    max_modules: int = 256
    """observation rows (models with fewer factorized modules are padded and masked)"""
    seed: int = 0
    """seed of the text sample and the budget draws"""

    def __post_init__(self) -> None:
        lo, hi = self.budget_range
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"--budget_range must satisfy 0 < low <= high <= 1, got {self.budget_range}")
        if bad := sorted(set(self.kinds) - set(KINDS)):
            raise ValueError(f"--kinds {bad} unknown; choose from {KINDS}")
        if self.quality not in QUALITIES:
            raise ValueError(f"--quality must be one of {QUALITIES}, got {self.quality!r}")
        for name in ("calib_batches", "eval_batches", "batch_size", "max_length", "max_modules"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")


def shares_from_action(action: np.ndarray, n: int) -> np.ndarray:
    """The budget shares of the first ``n`` rows: ``softmax(SHARE_TEMPERATURE * action)``; a NaN action raises."""
    a = np.asarray(action, dtype=float)[:n]
    if not np.all(np.isfinite(a)):
        raise ValueError("the policy's action has NaN/inf entries; retrain it (lower --ppo_lr)")
    z = SHARE_TEMPERATURE * np.clip(a, -1.0, 1.0)
    e = np.exp(z - z.max())
    return e / e.sum()


def _texts(spec: str, n: int, seed: int) -> list[str]:
    from rankrl.tasks import load_task

    task = load_task(spec, seed=seed)
    rows = [*task.splits["eval"], *task.splits.get("test", ())]
    texts = [r.text + (r.target or "") for r in rows]
    if len(texts) < n:
        raise ValueError(f"--texts {spec}: {len(texts)} held-out rows, need {n}; lower --eval_batches/--batch_size")
    return texts[:n]


class AttentionRankEnv(gym.Env):
    """Pick the rank of every factorized projection under a FLOP budget; the reward is the real quality kept.

    ## Action Space
    ``Box(-1, 1, (max_modules,), float32)``: a score per module row (padded rows ignored); the budget shares are
    ``softmax(4 * score)`` over the real rows, turned into ranks by
    :func:`~rankrl.compress.allocate.ranks_from_shares` (rank 1..break-even, the budget spent to the last whole
    direction; the rounding never gives a module more than its share asks once others still have room).
    :meth:`step_ranks` takes ``{module: rank}`` directly (baselines); it must fit the budget.

    ## Observation Space
    ``Dict(rows=Box(0, 1, (max_modules, len(ROW_NAMES))), mask, globals=Box(0, 1, (2,)))``, the set-policy layout.
    Rows (:data:`ROW_NAMES`): projection kind one-hot, depth, log2 widths / 16, the module's share of the dense
    FLOPs x module count / 4 (clipped), the (activation-scaled) spectral energy kept at 1/16, 1/8, 1/4, 1/2 of its
    break-even rank, and how uneven its input activations are. Globals: the episode's budget fraction and
    log(module count) / 5.

    ## Rewards
    ``-log(quality_loss)``-style, higher is better, 0 for the dense model: perplexity: ``-log(ppl / dense_ppl)``;
    embedding: ``log(cosine)`` of the mean-pooled last hidden states to the dense model's. ``info`` has the
    ranks, counted FLOPs and their fraction, and the quality numbers.

    ## Episode End
    One decision per episode (terminated after it); never truncated.

    ## Arguments
    ``config``: an :class:`AttentionRankConfig`; its fields may be given as keywords. ``loaded``: an already
    loaded :class:`~rankrl.models.LoadedModel` (tests, sharing one model between envs).

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: AttentionRankConfig | None = None, loaded: Any = None, **overrides: Any) -> None:
        valid = {f.name for f in fields(AttentionRankConfig)}
        if unknown := sorted(set(overrides) - valid):
            raise ValueError(f"unknown AttentionRankEnv arguments {unknown}; valid: {sorted(valid)}")
        base = config or AttentionRankConfig()
        self.config = cfg = AttentionRankConfig(**{**{f: getattr(base, f) for f in valid}, **overrides})
        from rankrl.compress.factorize import Spectra, activation_scales
        from rankrl.compress.measure import token_batches
        from rankrl.models import load_model
        from rankrl.targets import find_target_modules

        quality = cfg.quality if cfg.quality != "auto" else ("embedding" if cfg.model in ENCODERS else "perplexity")
        kind = "classification" if quality == "embedding" else "causal_lm"
        self.loaded = loaded or load_model(cfg.model, task_kind=kind, seed=cfg.seed)
        self.model = self.loaded.model.eval()
        self.quality = quality
        causal = "CausalLM" in type(self.model).__name__
        if self.quality == "perplexity" and not causal:
            raise ValueError(f"--env.quality perplexity needs a causal LM; {cfg.model} is an encoder (use embedding)")
        self.targets = tuple(find_target_modules(self.model, tuple(cfg.kinds)))
        if not self.targets:
            raise ValueError(f"{cfg.model} has no projections of kinds {cfg.kinds}")
        if len(self.targets) > cfg.max_modules:
            raise ValueError(f"{len(self.targets)} projections > --max_modules {cfg.max_modules}; raise it")
        n_calib, n_eval = cfg.calib_batches * cfg.batch_size, cfg.eval_batches * cfg.batch_size
        texts = _texts(cfg.texts, n_calib + n_eval, cfg.seed)
        tok = self.loaded.tokenizer
        causal_labels = self.quality == "perplexity"
        calib = token_batches(tok, texts[:n_calib], batch_size=cfg.batch_size, max_length=cfg.max_length,
                              causal=causal_labels)  # fmt: skip
        self.eval_batches = token_batches(tok, texts[n_calib:], batch_size=cfg.batch_size, max_length=cfg.max_length,
                                          causal=causal_labels)  # fmt: skip
        names = [t.name for t in self.targets]
        self.scales = activation_scales(self.model, names, calib) if cfg.activation_aware else None
        self.spectra = Spectra(self.model, names, self.scales)
        self.modules = [Module.from_svd(self.spectra.svds[n]) for n in names]
        if self.quality == "embedding":  # the reference the factorized model's states are compared with
            import copy

            self._dense_copy = copy.deepcopy(self.model)
        self.dense_quality = self._score(None)
        self._rows = self._row_features()
        rows, width = cfg.max_modules, len(ROW_NAMES)
        self.action_space = spaces.Box(-1.0, 1.0, (rows,), dtype=np.float32)
        self.observation_space = spaces.Dict({
            "rows": spaces.Box(0.0, 1.0, (rows, width), dtype=np.float32),
            "mask": spaces.Box(0.0, 1.0, (rows,), dtype=np.float32),
            "globals": spaces.Box(0.0, 1.0, (len(GLOBAL_NAMES),), dtype=np.float32),
        })  # fmt: skip
        self.budget_fraction = float(np.mean(cfg.budget_range))

    # ------------------------------------------------------------------------------------------- features
    def _row_features(self) -> np.ndarray:
        n = len(self.targets)
        units = np.array([m.dense for m in self.modules], dtype=float)
        rows = np.zeros((n, len(ROW_NAMES)), dtype=np.float32)
        for i, (t, m) in enumerate(zip(self.targets, self.modules, strict=True)):
            svd = self.spectra.svds[t.name]
            rows[i, KINDS.index(t.kind)] = 1.0
            k = len(KINDS)
            rows[i, k] = t.depth
            rows[i, k + 1] = math.log2(t.in_features) / 16
            rows[i, k + 2] = math.log2(t.out_features) / 16
            rows[i, k + 3] = min(units[i] / units.sum() * n / 4, 1.0)
            for j, f in enumerate((1 / 16, 1 / 8, 1 / 4, 1 / 2)):
                rows[i, k + 4 + j] = svd.energy_kept(max(1, int(f * max(m.break_even, 1))))
            s = svd.scale.double()
            rows[i, k + 8] = min(float(s.std() / s.mean().clamp_min(1e-12)), 1.0) if self.scales is not None else 0.0
        return rows

    def observation(self) -> dict[str, np.ndarray]:
        cfg, n = self.config, len(self.targets)
        rows = np.zeros((cfg.max_modules, len(ROW_NAMES)), np.float32)
        rows[:n] = self._rows
        mask = np.zeros(cfg.max_modules, np.float32)
        mask[:n] = 1.0
        glob = np.array([self.budget_fraction, min(math.log(n) / 5, 1.0)], np.float32)
        return {"rows": rows, "mask": mask, "globals": glob}

    # -------------------------------------------------------------------------------------------- quality
    def _score(self, ranks: dict[str, int] | None) -> dict[str, float]:
        from rankrl.compress.measure import hidden_fidelity, perplexity

        replaced = self.spectra.swap_in(self.model, ranks) if ranks is not None else {}
        try:
            if self.quality == "perplexity":
                return {"perplexity": perplexity(self.model, self.eval_batches)}
            if ranks is None:
                return {"embedding_cosine": 1.0, "hidden_rel_error": 0.0}
            return hidden_fidelity(self._dense_copy, self.model, self.eval_batches)
        finally:
            self.spectra.restore(self.model, replaced)

    def evaluate(self, ranks: dict[str, int]) -> dict[str, float]:
        """Quality of the model factorized at ``ranks`` (the dense modules are restored afterwards), the reward,
        and the counted FLOPs (absolute and as a fraction of the dense projections')."""
        q = self._score(ranks)
        if self.quality == "perplexity":
            reward = -math.log(q["perplexity"] / self.dense_quality["perplexity"])
        else:
            reward = math.log(max(q["embedding_cosine"], 1e-6))
        flops = ranks_flops(self.modules, ranks)
        dense = sum(m.dense for m in self.modules)
        return {**q, "reward": reward, "flops": float(flops), "flops_fraction": flops / dense,
                **{f"dense_{k}": v for k, v in self.dense_quality.items()}}  # fmt: skip

    @property
    def budget(self) -> int:
        """The episode's budget in FLOPs per token."""
        return budget_flops(self.modules, self.budget_fraction)

    def decode_action(self, action: np.ndarray) -> dict[str, int]:
        """The ranks an action asks for at the episode's budget."""
        return ranks_from_shares(self.modules, shares_from_action(action, len(self.modules)), self.budget)

    # ---------------------------------------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        options = dict(options or {})
        if "budget" in options:
            self.budget_fraction = float(options.pop("budget"))
            budget_flops(self.modules, self.budget_fraction)  # validates
        else:
            lo, hi = self.config.budget_range
            self.budget_fraction = float(self.np_random.uniform(lo, hi)) if hi > lo else float(lo)
        if options:
            raise ValueError(f"AttentionRankEnv.reset options: only 'budget', got {sorted(options)}")
        return self.observation(), {"budget": self.budget_fraction}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        return self.step_ranks(self.decode_action(action))

    def step_ranks(self, ranks: dict[str, int]) -> tuple[dict, float, bool, bool, dict]:
        """One decision given as ranks (baselines); it must fit the episode's budget."""
        if (flops := ranks_flops(self.modules, ranks)) > self.budget:
            raise ValueError(f"the ranks cost {flops:,} FLOPs/token > the budget {self.budget:,}")
        info = {**self.evaluate(ranks), "ranks": dict(ranks), "budget": self.budget_fraction}
        return self.observation(), float(info["reward"]), True, False, info

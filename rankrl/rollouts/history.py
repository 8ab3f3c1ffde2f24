"""One rollout history for every rollout allocator: what each prompt's rollouts have scored so far.

The GRPO trainer (:mod:`rankrl.rollouts.grpo`) records each round's scored rollouts under string prompt keys; the
env (:mod:`rankrl.rollouts.env`) records each round's reward arrays under integer prompt ids; the Knapsack RL
allocator reads Beta-posterior success rates, the learned allocator reads per-prompt features. One class keeps
both views of the same record:

* **outcomes** per key, the last ``window`` of them (all when ``window`` is None): :meth:`outcomes`,
  :meth:`counts`, :meth:`success_rates` (the Knapsack RL estimate);
* **running aggregates** per row, never windowed: ``trials``, ``successes`` (summed rewards), ``last_frac`` (the
  success fraction of the key's latest recorded round) and ``last_seen`` (that round's index): the policy's
  observation features (:func:`rankrl.rollouts.env.build_observation`).

Rows: a history built with ``n_prompts`` has the keys ``0 .. n_prompts - 1`` (a population's prompt ids) as their
own rows, so ``history.trials[prompt_ids]`` works directly; any other key gets the next row when first recorded
or looked up (:meth:`rows`). The pure round statistics (:func:`group_stats`, :func:`effective_rollout_ratio`) live
here too: the history, the sim and the env all read them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from rankrl.rollouts.knapsack import success_rates_from_history

__all__ = ["NEVER", "RolloutHistory", "effective_rollout_ratio", "group_stats"]

#: ``last_seen`` of a row never recorded
NEVER = -1_000_000


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


class RolloutHistory:
    """Per-prompt rollout outcomes and their running aggregates (see the module docstring).

    Args:
        n_prompts: keys ``0 .. n_prompts - 1`` are their own rows from the start (an env's population).
        window: keep only each key's last ``window`` outcomes for :meth:`success_rates` / :meth:`counts` /
            :meth:`outcomes` (None: all), so old policy behaviour fades; the aggregates are never windowed.

    Attributes:
        ids: row of every key looked up or recorded so far.
        trials: rollouts recorded per row.
        successes: summed rewards per row (each reward in [0, 1]; 0/1 successes from :meth:`update`).
        last_frac: success fraction of the row's latest recorded round.
        last_seen: round index of that round (:data:`NEVER` if none; :meth:`update` without a round keeps it).

    Example:
        >>> h = RolloutHistory(4)
        >>> h.record(np.array([1, 3]), [np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 0.0])], round_idx=2)
        >>> h.trials.tolist(), h.last_frac[1], h.counts(3)
        ([0.0, 4.0, 0.0, 2.0], np.float64(0.75), (0.0, 2))
        >>> h.update(["a", "a", "b"], [True, False, True])
        >>> h.rows(["a", "b"]).tolist(), h.success_rates(["a", "new"]).tolist()
        ([4, 5], [0.5, 0.5])
    """

    def __init__(self, n_prompts: int = 0, window: int | None = None) -> None:
        if n_prompts < 0:
            raise ValueError(f"n_prompts must be >= 0, got {n_prompts}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.window = window
        self.ids: dict[Hashable, int] = {i: i for i in range(n_prompts)}
        self.trials = np.zeros(n_prompts)
        self.successes = np.zeros(n_prompts)
        self.last_frac = np.zeros(n_prompts)
        self.last_seen = np.full(n_prompts, NEVER, dtype=np.int64)
        self._outcomes: dict[Hashable, deque] = {}  # keys with at least one outcome, in first-seen order

    # ------------------------------------------------------------------------------------------ writing
    def record(self, prompt_ids: Sequence[Hashable] | np.ndarray, rewards: Sequence[np.ndarray],
               round_idx: int | None) -> None:  # fmt: skip
        """Add one round: a reward array (each reward in [0, 1]) per distinct prompt, seen at ``round_idx``.

        Empty arrays are skipped. ``round_idx=None`` leaves ``last_seen`` as it was.
        """
        keys = prompt_ids.tolist() if isinstance(prompt_ids, np.ndarray) else list(prompt_ids)
        sizes, sums, _ = group_stats(rewards)
        if len(keys) != sizes.size or len(set(keys)) != len(keys):
            raise ValueError("need one reward array per prompt id and distinct ids")
        seen = np.flatnonzero(sizes)
        rows = self.rows([keys[i] for i in seen])
        sizes, sums = sizes[seen], sums[seen]
        self.trials[rows] += sizes
        self.successes[rows] += sums
        self.last_frac[rows] = sums / sizes
        if round_idx is not None:
            self.last_seen[rows] = round_idx
        for i in seen.tolist():
            key = keys[i]
            if key not in self._outcomes:
                self._outcomes[key] = deque(maxlen=self.window)
            self._outcomes[key].extend(np.asarray(rewards[i]).ravel().tolist())

    def update(self, keys: Iterable[Hashable], successes: Iterable[bool], round_idx: int | None = None) -> None:
        """Record one 0/1 outcome per (key, success) pair: a round's scored rollouts, a key may repeat.

        Each key's outcomes of the call form its latest round (``last_frac``); see :meth:`record`.
        """
        groups: dict[Hashable, list[int]] = {}
        for key, ok in zip(keys, successes, strict=True):
            groups.setdefault(key, []).append(int(bool(ok)))
        if groups:
            self.record(list(groups), [np.array(v) for v in groups.values()], round_idx)

    def rows(self, keys: Sequence[Hashable]) -> np.ndarray:
        """Row of each key in the aggregate arrays; a new key gets a new row (nothing recorded, never seen)."""
        new = list(dict.fromkeys(k for k in keys if k not in self.ids))
        if new:
            for key in new:
                self.ids[key] = len(self.ids)
            grow = len(self.ids) - self.trials.size
            self.trials, self.successes, self.last_frac = (np.concatenate([a, np.zeros(grow)]) for a in
                                                           (self.trials, self.successes, self.last_frac))  # fmt: skip
            self.last_seen = np.concatenate([self.last_seen, np.full(grow, NEVER, dtype=np.int64)])
        return np.fromiter((self.ids[k] for k in keys), dtype=np.int64, count=len(keys))

    # ------------------------------------------------------------------------------------------ reading
    def keys(self) -> list[Hashable]:
        """Every key with at least one recorded outcome, in first-seen order."""
        return list(self._outcomes)

    def total(self, key: Hashable) -> int:
        """How many outcomes of ``key`` were ever recorded (not capped by ``window``)."""
        row = self.ids.get(key)
        return 0 if row is None else int(self.trials[row])

    def outcomes(self, key: Hashable) -> list[float]:
        """The kept outcomes of ``key`` (its last ``window``; empty if never seen)."""
        return list(self._outcomes.get(key, ()))

    def counts(self, key: Hashable) -> tuple[float, int]:
        """``(successes, trials)`` of ``key`` over its kept outcomes."""
        seen = self._outcomes.get(key, ())
        return sum(seen), len(seen)

    def success_rates(self, keys: Sequence[Hashable], prior: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
        """Beta-posterior-mean success rate per key from its kept outcomes (unseen keys: the prior mean)."""
        return success_rates_from_history([self.outcomes(k) for k in keys], *prior)

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The whole history as JSON-able data (keys must be ``str`` or ``int``), for a training checkpoint.

        >>> h = RolloutHistory(window=3)
        >>> h.update(["a", "a", "b"], [True, False, True], round_idx=4)
        >>> g = RolloutHistory.from_state_dict(h.state_dict())
        >>> g.outcomes("a"), g.counts("b"), g.last_seen.tolist(), g.window
        ([1, 0], (1, 1), [4, 4], 3)
        """
        for key in self.ids:
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise TypeError(f"only str and int prompt keys can be checkpointed, got {key!r}")
        return {
            "window": self.window,
            "ids": [[k, r] for k, r in self.ids.items()],
            "trials": self.trials.tolist(),
            "successes": self.successes.tolist(),
            "last_frac": self.last_frac.tolist(),
            "last_seen": self.last_seen.tolist(),
            "outcomes": [[k, list(v)] for k, v in self._outcomes.items()],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> RolloutHistory:
        """The history :meth:`state_dict` described."""
        history = cls(0, window=state["window"])
        history.ids = {k: int(r) for k, r in state["ids"]}
        history.trials = np.asarray(state["trials"], dtype=np.float64)
        history.successes = np.asarray(state["successes"], dtype=np.float64)
        history.last_frac = np.asarray(state["last_frac"], dtype=np.float64)
        history.last_seen = np.asarray(state["last_seen"], dtype=np.int64)
        history._outcomes = {k: deque(v, maxlen=history.window) for k, v in state["outcomes"]}
        if not len(history.ids) == history.trials.size == history.last_seen.size:
            raise ValueError("a rollout history checkpoint whose rows and arrays disagree")
        return history

    def __len__(self) -> int:
        return len(self._outcomes)

    def __contains__(self, key: object) -> bool:
        return key in self._outcomes

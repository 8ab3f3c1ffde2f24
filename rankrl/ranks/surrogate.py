"""The learned surrogate: final eval loss of a LoRA run predicted from where its ranks go, fitted on a dataset of
live runs (:mod:`rankrl.ranks.runs`), and a sim backend for LoRARankEnv built on it.

Features are model-agnostic rank masses of one allocation (:func:`allocation_features`): the parameter fraction
of uniform ``r_max``; per module group (q+k, v+o, MLP) the fraction of that group's ``r_max`` parameters used,
its share of the allocated parameters and its mean concave capacity ``log1p(r) / log1p(r_max)``; the shares of
the allocated parameters in each third of the depth; the fraction of modules that are on; and the run length
(``log_steps``: the order of allocations changes with it - at 40 steps on MiniLM/TREC-6 the learned policy beat
random and EVA allocations in loss, at 120 steps they were ahead of it - so a dataset with runs of several lengths
tells the trees at which length an effect holds; with one length the column is constant and never split on). The
target is
``log(eval_loss / eval_loss of uniform r_max)`` of the same (model, task, run settings, seed): each pair's own
full-rank run is the reference, so pairs with very different losses share one scale, and the order of
allocations within a pair (what a policy needs) is unchanged by it. The regressor is scikit-learn's
``GradientBoostingRegressor`` (depth-3 trees, shrinkage 0.05, 300 trees, row subsampling 0.8; fixed, not tuned on
the evaluation): boosted trees on per-kind and per-depth rank mass, as the rank-policy issue suggests.

Nothing is stored but the dataset: the surrogate is refitted from the JSONL file (well under a second for a few
hundred rows) wherever it is needed, so no model file (and no pickle) exists.

:func:`held_out_spearman` measures it: Spearman between predicted and live losses on allocations the fit did not
see (k-fold over runs, per (model, task)) and on a (model, task) pair left out of the fit entirely.

As a sim (:meth:`LearnedSurrogate.calibration`), a run at a constant allocation ends at the predicted loss;
mid-run re-allocations are stitched by lr-weighted time: every segment moves the log-loss by
``-g(r) * (lr area of the segment / lr area of the run)`` with ``g(r) = -log(predicted loss / L0)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankrl.ranks.runs import ATTENTION_KINDS, MLP_KINDS, RUN_KEYS, read_runs
from rankrl.ranks.sim import SimCalibration, lr_area

__all__ = [
    "FEATURE_NAMES",
    "LearnedCalibration",
    "LearnedSurrogate",
    "allocation_features",
    "held_out_predictions",
    "held_out_spearman",
    "learned_calibration",
]

GROUPS: dict[str, frozenset[str]] = {"qk": frozenset({"q", "k"}), "vo": frozenset({"v", "o"}), "mlp": MLP_KINDS}
assert GROUPS["qk"] | GROUPS["vo"] == ATTENTION_KINDS
FEATURE_NAMES: tuple[str, ...] = (
    "params_frac",
    *(f"{g}_frac" for g in GROUPS),
    *(f"{g}_share" for g in GROUPS),
    *(f"{g}_capacity" for g in GROUPS),
    "depth_share_0", "depth_share_1", "depth_share_2",
    "active_frac",
    "log_steps",
)  # fmt: skip
#: the regressor's settings (fixed; see the module docstring)
REGRESSOR = dict(n_estimators=300, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=0)


def allocation_features(modules: Sequence[Sequence[Any]], ranks: Sequence[int], r_max: int,
                        steps: int | None = None) -> np.ndarray:  # fmt: skip
    """The feature vector (:data:`FEATURE_NAMES`) of one allocation in a run of ``steps`` optimizer steps.

    Args:
        modules: per module ``(kind, layer_index, num_layers, in_features, out_features)`` (a dataset row's
            ``modules``; :func:`module_rows` makes them from target modules).
        ranks: rank per module, same order.
        r_max: the run's top rank.
        steps: the run's optimizer steps (None: unknown, read as missing like an absent module group).

    >>> m = [("q", 0, 2, 4, 4), ("up", 1, 2, 4, 12)]
    >>> dict(zip(FEATURE_NAMES, allocation_features(m, [8, 0], 8).round(3).tolist()))["qk_share"]
    1.0
    """
    kinds = [m[0] for m in modules]
    r = np.asarray(ranks, dtype=np.float64)
    if r.shape != (len(modules),) or (r < 0).any() or r_max < 1:
        raise ValueError(f"need one rank >= 0 per module ({len(modules)}) and r_max >= 1")
    cost = np.array([m[3] + m[4] for m in modules], dtype=np.float64)
    third = np.array([min(int(3 * m[1] / max(m[2], 1)), 2) for m in modules])
    params = r * cost
    total = params.sum()
    cap = np.log1p(r) / math.log1p(r_max)
    out = [total / (r_max * cost.sum())]
    masks = {g: np.array([k in kinds_g for k in kinds]) for g, kinds_g in GROUPS.items()}
    # a group the model lacks reads NaN (the trees route missing values), not 0 ("present but off")
    out += [params[m].sum() / (r_max * cost[m].sum()) if m.any() else math.nan for m in masks.values()]
    out += [params[m].sum() / total if m.any() and total > 0 else (0.0 if m.any() else math.nan)
            for m in masks.values()]  # fmt: skip
    out += [cap[m].mean() if m.any() else math.nan for m in masks.values()]
    out += [params[third == i].sum() / total if total > 0 else 0.0 for i in range(3)]
    out.append(float((r > 0).mean()))
    if steps is not None and not steps >= 1:
        raise ValueError(f"steps must be >= 1 (or None: unknown), got {steps}")
    out.append(math.log(steps) if steps is not None else math.nan)
    return np.array(out, dtype=np.float64)


def module_rows(targets: Sequence[Any]) -> list[tuple[str, int, int, int, int]]:
    """``(kind, layer_index, num_layers, in_features, out_features)`` per target module (a row's ``modules``)."""
    return [(t.kind, t.layer_index, t.num_layers, t.in_features, t.out_features) for t in targets]


def pair_of(row: Mapping[str, Any]) -> str:
    """The (model, task) a row belongs to, as one string (TREC tasks: with their label set)."""
    task = str(row["task"]).rstrip("/").split("/")[-1]
    return f"{row['model']}/{task}" + (f":{row['labels']}" if "trec" in task.lower() else "")


def _group(row: Mapping[str, Any]) -> str:
    return repr([row.get(k) for k in RUN_KEYS])


def _prepared(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Features, targets and the rows kept (those whose group has a uniform r_max run; finite losses only)."""
    tops = {}
    for row in rows:
        if row["structure"] == "uniform" and row["budget_rank"] == row["r_max"] and math.isfinite(row["eval_loss"]):
            tops[_group(row)] = row["eval_loss"]
    kept = [r for r in rows if _group(r) in tops and math.isfinite(r["eval_loss"]) and r["eval_loss"] > 0]
    if not kept:
        raise ValueError("no run in the dataset has its group's uniform r_max reference run; collect with --top")
    X = np.stack([allocation_features(r["modules"], r["ranks"], r["r_max"], r["steps"]) for r in kept])
    y = np.array([math.log(r["eval_loss"] / tops[_group(r)]) for r in kept])
    return X, y, [dict(r) for r in kept]


def _line(rows: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """``(intercept, slope)`` of accuracy on eval_loss / loss0 (least squares; flat when the losses do not vary)."""
    x = np.array([r["eval_loss"] / r["loss0"] for r in rows])
    acc = np.array([r["accuracy"] for r in rows])
    if len(rows) < 3 or np.ptp(x) < 1e-9:
        return float(acc.mean()) if len(rows) else 0.5, 0.0
    slope, intercept = np.polyfit(x, acc, 1)
    return float(intercept), float(slope)


def _fit(X: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    # GradientBoostingRegressor routes NaN since scikit-learn 1.4 only in the hist variant; a constant fill of -1
    # (outside every feature's [0, 1] range) keeps "the model has no such group" separable from "group off"
    model = make_pipeline(SimpleImputer(strategy="constant", fill_value=-1.0), GradientBoostingRegressor(**REGRESSOR))
    return model.fit(X, y)


class LearnedSurrogate:
    """Boosted trees fitted on a dataset of live runs (see the module docstring).

    Args:
        rows: dataset rows (:func:`rankrl.ranks.runs.read_runs`).
        exclude_pairs: (model, task) pairs (:func:`pair_of` strings) left out of the fit (transfer checks).
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], *, exclude_pairs: Sequence[str] = ()) -> None:
        rows = [r for r in rows if pair_of(r) not in set(exclude_pairs)]
        X, y, kept = _prepared(rows)
        if len(kept) < 10:
            raise ValueError(f"only {len(kept)} usable run(s) in the dataset: collect more (rankrl collect-runs)")
        self.rows, self.pairs = kept, sorted({pair_of(r) for r in kept})
        self.model = _fit(X, y)
        # loss of uniform r_max / loss at step 0, per (pair, run length) (the reference the targets are relative to)
        top: dict[tuple[str, int], list[float]] = {}
        for r in kept:
            if r["structure"] == "uniform" and r["budget_rank"] == r["r_max"]:
                top.setdefault((pair_of(r), int(r["steps"])), []).append(r["eval_loss"] / r["loss0"])
        self.top_ratios = {k: float(np.mean(v)) for k, v in top.items()}
        # for the sim's printed numbers only (its rewards are relative to the loss at reset): each pair's loss at
        # step 0 and a line accuracy ~ eval_loss / loss0 (per pair, and over every pair for pairs not in the data)
        self.loss0 = {p: float(np.mean([r["loss0"] for r in kept if pair_of(r) == p])) for p in self.pairs}
        self.accuracy_line = {p: _line([r for r in kept if pair_of(r) == p]) for p in self.pairs}
        self.accuracy_line[""] = _line(kept)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> LearnedSurrogate:
        """Fit on the rows of a dataset file."""
        return cls(read_runs(path), **kwargs)

    def predict(self, modules: Sequence[Sequence[Any]], ranks_list: Sequence[Sequence[int]], r_max: int,
                steps: int | None = None) -> np.ndarray:  # fmt: skip
        """Predicted ``log(eval_loss / eval_loss at uniform r_max)`` of each allocation in a run of ``steps``
        optimizer steps (None: unknown)."""
        X = np.stack([allocation_features(modules, r, r_max, steps) for r in ranks_list])
        return self.model.predict(X)

    def top_ratio(self, pair: str, steps: int) -> float:
        """Eval loss of uniform r_max after ``steps`` / loss at step 0 for ``pair``: its own when the dataset has
        it, else the mean over the pairs at that length, else the pair's mean over lengths, else the mean of all."""
        r = self.top_ratios
        if (pair, steps) in r:
            return r[(pair, steps)]
        for keep in (lambda p, s: s == steps, lambda p, s: p == pair, lambda p, s: True):
            if vals := [v for (p, s), v in r.items() if keep(p, s)]:
                return float(np.mean(vals))
        raise AssertionError("a fitted surrogate always has a reference run")

    def calibration(self, targets: Sequence[Any], static: np.ndarray, r_max: int, *, run_steps: int,
                    warmup_steps: int = 0, model: str = "", task: str = "") -> LearnedCalibration:  # fmt: skip
        """A sim calibration (for ``LoRARankEnv(backend="sim", calibration=...)``) of a model's targets and static
        feature rows, with this surrogate as its learning curve for runs of ``run_steps``. The final loss relative
        to the loss at step 0 of uniform r_max is :meth:`top_ratio`."""
        pair = pair_of({"model": model, "task": task, "labels": "coarse"})
        top = self.top_ratio(pair, run_steps)
        loss0 = self.loss0.get(pair, 1.0)
        a, b = self.accuracy_line.get(pair, self.accuracy_line[""])
        return LearnedCalibration(tuple(targets), static, r_max, loss0=loss0, loss_inf=0.0, rate0=0.0, rate1=0.0,
                                  sensitivity=np.ones(len(targets)), run_steps=run_steps, warmup_steps=warmup_steps,
                                  acc_intercept=a, acc_slope=b / loss0, model=model or "learned",
                                  task=task or "learned", surrogate=self, top_ratio=top)  # fmt: skip


@dataclass(frozen=True, eq=False)
class LearnedCalibration(SimCalibration):
    """A :class:`~rankrl.ranks.sim.SimCalibration` whose curve is a :class:`LearnedSurrogate` (see the module
    docstring); ``loss0`` and the accuracy line only scale what is printed (the env's rewards are relative to the
    loss at reset)."""

    surrogate: Any = None
    """the fitted surrogate"""
    top_ratio: float = 1.0
    """eval loss of uniform r_max at the end of the run / loss at step 0"""

    def _gain(self, ranks: Mapping[str, int] | Sequence[int] | np.ndarray) -> float:
        r = self._rank_array(ranks)
        if not r.any():
            return 0.0  # nothing trains but the head: the dataset has no such run; no LoRA progress
        pred = float(self.surrogate.predict(module_rows(self.targets), [r.astype(int).tolist()], self.r_max,
                                            self.run_steps)[0])  # fmt: skip
        return max(0.0, -(math.log(self.top_ratio) + pred))  # -log(final loss / L0), never a loss increase

    def capacity(self, ranks: Mapping[str, int] | Sequence[int] | np.ndarray) -> float:
        return self._gain(ranks)

    def rate(self, ranks: Mapping[str, int] | Sequence[int] | np.ndarray) -> float:
        return self._gain(ranks) / lr_area(0, self.run_steps, self.run_steps, self.warmup_steps)

    def loss_at(self, progress: float, capacity: float = 0.0) -> float:
        return self.loss0 * math.exp(-progress)


def held_out_predictions(rows: Sequence[Mapping[str, Any]], *, folds: int = 5,
                         seed: int = 0) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """``(rows kept, live targets, held-out predictions, is_reference)``: every run but the reference runs (uniform
    r_max, always fitted on; their prediction is NaN) is predicted by a fit on the ``folds - 1`` other folds."""
    X, y, kept = _prepared(rows)
    return (kept, y, *_held_out(X, y, kept, folds, seed))


def _held_out(X: np.ndarray, y: np.ndarray, kept: Sequence[Mapping[str, Any]], folds: int,
              seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``(held-out predictions, is_reference)`` of prepared features and targets (see :func:`held_out_predictions`)."""
    is_top = np.array([r["structure"] == "uniform" and r["budget_rank"] == r["r_max"] for r in kept])
    fold = np.random.default_rng(seed).permutation(len(kept)) % folds
    fold[is_top] = -1
    pred = np.full(len(kept), np.nan)
    for f in range(folds):
        test = fold == f
        if test.any():
            pred[test] = _fit(X[~test], y[~test]).predict(X[test])
    return pred, is_top


def held_out_spearman(rows: Sequence[Mapping[str, Any]], *, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Spearman between predicted and live eval losses on runs the fit did not see.

    Returns ``{"allocations": {pair: rho}, "pairs": {pair: rho}, "n": {pair: runs}, "pooled_allocations": rho,
    "by_length": {pair: {steps: {"rho", "n"}}}, "pooled_by_length": {steps: rho}}``: ``allocations`` pools each
    pair's held-out predictions over ``folds`` random folds of all runs (every pair's runs spread over the folds);
    ``by_length`` splits the same predictions by run length; ``pairs`` fits on every other pair and predicts the
    left-out one. The reference runs (uniform r_max) are in every fit and excluded from the correlations (their
    target is 0 by construction).
    """
    from scipy.stats import spearmanr

    X, y, kept = _prepared(rows)
    pred, is_top = _held_out(X, y, kept, folds, seed)
    pairs = np.array([pair_of(r) for r in kept])
    steps = np.array([r["steps"] for r in kept])
    out: dict[str, Any] = {"allocations": {}, "pairs": {}, "n": {}, "by_length": {}, "pooled_by_length": {}}
    for p in sorted(set(pairs)):
        m = (pairs == p) & ~is_top
        out["n"][p] = int(m.sum())
        if m.sum() >= 3:
            out["allocations"][p] = float(spearmanr(pred[m], y[m]).statistic)
        train = pairs != p
        if len(set(pairs)) >= 2 and m.sum() >= 3:
            out["pairs"][p] = float(spearmanr(_fit(X[train], y[train]).predict(X[m]), y[m]).statistic)
        for n in sorted(set(steps[pairs == p])):
            mn = m & (steps == n)
            if mn.sum() >= 3:
                out["by_length"].setdefault(p, {})[str(n)] = {"rho": float(spearmanr(pred[mn], y[mn]).statistic),
                                                              "n": int(mn.sum())}  # fmt: skip
    out["pooled_allocations"] = float(spearmanr(pred[~is_top], y[~is_top]).statistic)
    for n in sorted(set(steps)):
        mn = (steps == n) & ~is_top
        if mn.sum() >= 3:
            out["pooled_by_length"][str(n)] = float(spearmanr(pred[mn], y[mn]).statistic)
    return out


def learned_calibration(path: str | os.PathLike, run_config: Any, *, exclude_pairs: Sequence[str] = ()
                        ) -> LearnedCalibration:  # fmt: skip
    """The learned sim of ``run_config``'s (model, task): a surrogate fitted on the dataset at ``path`` (minus
    ``exclude_pairs``) over the model's target modules and static feature rows (one live feature pass, cached)."""
    from rankrl.ranks.finetune import model_features

    rows = read_runs(path)
    if not rows:
        raise FileNotFoundError(f"--surrogate: no dataset of live runs at {path}; grow one with rankrl collect-runs")
    steps = {r["steps"] for r in rows}
    if run_config.steps not in steps:
        print(f"note: the dataset's runs are {sorted(steps)} steps long, this run {run_config.steps}: the surrogate "
              "predicts as for the nearest length it saw (trees do not extrapolate; collect runs of this length with "
              f"rankrl collect-runs --steps {run_config.steps})", flush=True)  # fmt: skip
    surrogate = LearnedSurrogate(rows, exclude_pairs=exclude_pairs)
    targets, features, _ = model_features(run_config.model, run_config.task, r_max=run_config.r_max,
                                          seed=run_config.seed, threads=run_config.threads)  # fmt: skip
    return surrogate.calibration(targets, features.static, run_config.r_max, run_steps=run_config.steps,
                                 warmup_steps=run_config.warmup_steps, model=run_config.model,
                                 task=run_config.task)  # fmt: skip

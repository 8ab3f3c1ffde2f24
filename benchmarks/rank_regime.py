"""Where does rank allocation matter on this machine? Issue 13 item 4's first step, measured before the benchmark.

For each run length (``--steps``), MiniLM on TREC-6 (coarse), paired seeds 3-7, lr 3e-3 for every row (the
episode's lr; the dev-tuned benchmark is ``benchmarks/rank_policy_tuned.py``), scored on the 500-row dev split
carved from TREC.train and on TREC.test:

* capacity: uniform LoRA at rank 1 vs rank 8 (8x the parameters) - does capacity bind at all?
* structure: attention-only vs MLP-only at the parameters of uniform rank 1 - does *where* the rank goes matter?

Paired t-tests (scipy ``ttest_rel``) over seeds on test accuracy and test loss. A regime "matters" when either
comparison is significant (p < 0.05). Every row is one ``rankrl baselines`` call (folders reused when present).

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rank_regime.py --steps 40 120`` (~10 s per 40-step run on 2
cores); writes ``benchmarks/results/rank_regime.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.rank_policy_trec import DATA, baselines_results, header, need_inputs, paired  # noqa: E402
from rankrl.atomic import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def compare(a_runs: list[dict], b_runs: list[dict]) -> dict:
    """Paired (by seed) means and tests of two rows on test accuracy and loss."""
    a, b = {r["seed"]: r for r in a_runs}, {r["seed"]: r for r in b_runs}
    seeds = sorted(set(a) & set(b))
    out = {"seeds": seeds}
    for k in ("test_accuracy", "test_loss", "accuracy", "eval_loss"):
        out[k] = {"a": float(np.mean([a[s][k] for s in seeds])), "b": float(np.mean([b[s][k] for s in seeds])),
                  **paired([a[s][k] for s in seeds], [b[s][k] for s in seeds])}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", nargs="+", type=int, default=[40, 120])
    ap.add_argument("--seeds", nargs="+", type=int, default=[3, 4, 5, 6, 7])
    ap.add_argument("--lr", default="3e-3")
    ap.add_argument("--max-eval", type=int, default=500)
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "rank_regime"))
    ap.add_argument("--out", default=str(RESULTS / "rank_regime.json"))
    a = ap.parse_args()
    need_inputs()
    t0, out = time.time(), {}
    for steps in a.steps:
        common = ["baselines", "--uniform_lrs", a.lr, "--run.lr", a.lr, "--seeds", *map(str, a.seeds), "--run.task",
                  str(DATA), "--run.labels", "coarse", "--run.max_eval", str(a.max_eval), "--run.steps", str(steps),
                  "--test", "--no_wandb"]  # fmt: skip
        r1 = baselines_results(Path(a.workdir) / f"steps{steps}_rank1", [
            *common, "--methods", "uniform", "attention", "mlp", "--budget.rank", "1"])["runs"]  # fmt: skip
        r8 = baselines_results(Path(a.workdir) / f"steps{steps}_rank8", [
            *common, "--methods", "uniform", "--budget.rank", "8"])["runs"]  # fmt: skip
        by = {m: [r for r in r1 if r["method"] == m] for m in ("uniform", "attention", "mlp")}
        row = out[str(steps)] = {"uniform8_vs_uniform1": compare(r8, by["uniform"]),
                                 "attention_vs_mlp": compare(by["attention"], by["mlp"])}  # fmt: skip
        print(f"\nMiniLM / TREC-6, {steps} steps, lr {a.lr}, seeds {a.seeds}: test accuracy a vs b (paired p)")
        for name, c in row.items():
            ta, tl = c["test_accuracy"], c["test_loss"]
            print(f"  {name:<22} acc {ta['a']:.4f} vs {ta['b']:.4f} ({ta['mean_diff']:+.4f}, p {ta['ttest_p']:.3f}); "
                  f"loss {tl['a']:.4f} vs {tl['b']:.4f} (p {tl['ttest_p']:.3f})")  # fmt: skip
        row["matters"] = bool(any(c[k]["ttest_p"] < 0.05 for c in row.values() if isinstance(c, dict)
                                  for k in ("test_accuracy", "test_loss")))  # fmt: skip
        print(f"  allocation matters here (some p < 0.05): {row['matters']}")
    atomic_write_json(Path(a.out), {**header(t0), "seeds": a.seeds, "lr": a.lr, "max_eval": a.max_eval, "steps": out})
    print(f"\n-> {a.out}")


if __name__ == "__main__":
    main()

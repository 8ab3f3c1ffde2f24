"""The learned-sim policy against every allocation rule on a task it never saw, over paired unseen seeds.

The policy is the one ``benchmarks/rank_policy_learned.py`` trains for MiniLM / TREC-6 *without* any TREC-6 run in
the surrogate's data (``runs/rank_policy_learned/minilm_trec_qc_coarse``; run that script first). For each mean-rank
budget this runs ``rankrl baselines`` (uniform, random, spectrum, importance, EVA, AdaLoRA and the policy, all at
the same parameter cap, 40 steps at lr 3e-3 - the episode the policy was trained for; no lr sweep) on seeds 3-7,
which no run in the dataset used, and scores them on 500 held-out rows (the eval split ``rankrl`` carves,
stratified, from TREC.train: ``baselines`` has no test-split option; nothing here was tuned on those rows). Paired
t-tests (scipy ``ttest_rel``) of the policy against each rule on eval loss and accuracy. AdaLoRA gets the uniform
baseline's budget in its own rank terms (``--no_adalora_worst_case``: target_r = the uniform rank; it may end above
the parameter cap, which the params column shows).

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rank_policy_trec.py`` (~3.5 min per budget on 2 cores; each
budget's ``rankrl baselines`` folder is reused when it already holds results.json); writes
``benchmarks/results/rank_policy_trec.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rankrl.atomic import atomic_write_json  # noqa: E402
from rankrl.cli import main as rankrl_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "trec_qc"
RULES = ("uniform", "random", "spectrum", "importance", "eva", "adalora")


def header(t0: float) -> dict:
    """What every rank-benchmark JSON starts with: date, machine, command line and seconds since ``t0``."""
    return {"date": datetime.now().isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "command": " ".join(sys.argv), "seconds": time.time() - t0}  # fmt: skip


def method_bars(panels: dict[str, dict], key: str, title, path: Path, *, width: float = 5.0,
                ylim: tuple[float, float] | None = None) -> None:
    """One bar panel per budget: each method's mean ``key`` with ``<key>_std`` error bars, the policy in red;
    ``title(budget, row)`` names a panel. Written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 3.6 if ylim else 3.5), squeeze=False)
    for ax, (budget, row) in zip(axes[0], panels.items(), strict=True):
        names = list(row["methods"])
        ax.bar(names, [row["methods"][m][key] for m in names], yerr=[row["methods"][m][f"{key}_std"] for m in names],
               color=["C3" if m == "policy" else "C0" for m in names])  # fmt: skip
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_title(title(budget, row), fontsize=9 if ylim else None)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def baselines_results(folder: Path, argv: list[str]) -> dict:
    """``results.json`` of one ``rankrl baselines`` call writing to ``folder`` (run only when it is not there yet)."""
    if not (folder / "results.json").exists():
        argv = [*argv, "--out", str(folder)]
        if rankrl_main(argv) != 0:
            sys.exit(f"rankrl {' '.join(argv)} failed")
    return json.loads((folder / "results.json").read_text())


def need_inputs(policy: str | None = None) -> None:
    """Exit with the fix when the TREC data (or the policy) these benchmarks read is missing."""
    if not DATA.exists():
        sys.exit(f"{DATA} is missing: this benchmark needs ../shared/data/trec_qc beside the checkout")
    if policy is not None and not (Path(policy) / "policy.json").exists():
        sys.exit(f"no policy at {policy}: run benchmarks/rank_policy_learned.py first (or pass --policy)")


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    from scipy.stats import ttest_rel

    return {"mean_diff": float(np.mean(np.subtract(a, b))), "ttest_p": float(ttest_rel(a, b).pvalue),
            "wins": int(np.sum(np.subtract(a, b) > 0)), "n": len(a)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=str(ROOT / "runs" / "rank_policy_learned" / "minilm_trec_qc_coarse"))
    ap.add_argument("--budgets", nargs="+", type=float, default=[0.5, 1.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[3, 4, 5, 6, 7])
    ap.add_argument("--max-eval", type=int, default=500)
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "rank_policy_trec"))
    ap.add_argument("--out", default=str(RESULTS / "rank_policy_trec.json"))
    a = ap.parse_args()
    need_inputs(a.policy)
    t0, out = time.time(), {}
    for budget in a.budgets:
        runs = baselines_results(Path(a.workdir) / f"rank{budget:g}", [
            "baselines", "--methods", *RULES, "--uniform_lrs", "0.003", "--policy", a.policy, "--seeds",
            *map(str, a.seeds), "--budget.rank", str(budget), "--run.task", str(DATA), "--run.labels", "coarse",
            "--run.max_eval", str(a.max_eval), "--no_wandb", "--no_adalora_worst_case"])["runs"]  # fmt: skip
        by = {m: {r["seed"]: r for r in runs if r["method"] == m} for m in (*RULES, "policy")}
        seeds = sorted(by["policy"])
        row: dict = {"methods": {}, "policy_vs": {}}
        for m, rs in by.items():
            row["methods"][m] = {k: float(np.mean([rs[s][k] for s in seeds])) for k in ("eval_loss", "accuracy",
                                                                                         "params")}  # fmt: skip
            row["methods"][m]["accuracy_std"] = float(np.std([rs[s]["accuracy"] for s in seeds]))
            row["methods"][m]["rank0_modules"] = float(np.mean([sum(v == 0 for v in rs[s]["ranks"].values())
                                                                for s in seeds]))  # fmt: skip
        for m in RULES:
            row["policy_vs"][m] = {k: paired([by["policy"][s][k] for s in seeds], [by[m][s][k] for s in seeds])
                                   for k in ("eval_loss", "accuracy")}  # fmt: skip
        out[f"{budget:g}"] = row
        print(f"\nMiniLM / TREC-6 held-out eval ({a.max_eval} rows), mean rank {budget:g}, seeds {seeds}")
        print(f"  {'method':<11} {'params':>8} {'rank-0':>6} {'eval loss':>9} {'accuracy':>15}  policy - this (p)")
        for m, s in row["methods"].items():
            vs = row["policy_vs"].get(m)
            tail = (f"  loss {vs['eval_loss']['mean_diff']:+.4f} (p {vs['eval_loss']['ttest_p']:.3f}), acc "
                    f"{vs['accuracy']['mean_diff']:+.4f} (p {vs['accuracy']['ttest_p']:.3f})") if vs else ""  # noqa: E501
            print(f"  {m:<11} {s['params']:>8,.0f} {s['rank0_modules']:>6.1f} {s['eval_loss']:>9.4f} "
                  f"{s['accuracy']:>8.4f} +- {s['accuracy_std']:.3f}{tail}")  # fmt: skip
    result = {**header(t0), "policy": a.policy, "seeds": a.seeds, "max_eval": a.max_eval, "budgets": out}
    path = Path(a.out)
    atomic_write_json(path, result)
    method_bars(out, "accuracy", lambda budget, _: f"TREC-6, mean rank {budget}: eval accuracy ({len(a.seeds)} seeds)",
                path.with_suffix(".png"))  # fmt: skip
    print(f"\n-> {path} (+ .png)")


if __name__ == "__main__":
    main()

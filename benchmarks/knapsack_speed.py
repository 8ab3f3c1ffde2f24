"""Speed and effect of the exact Knapsack RL rollout allocator (``rankrl.rollouts.knapsack.allocate``).

1,000 prompts with success rates p ~ Beta(0.5, 0.5) (U-shaped: many nearly-always-solved and
nearly-never-solved prompts, as in Li et al. 2025, Knapsack RL), bounds n_min = 2 (the official ``min_n``)
and n_max = 64, budgets 4,000 / 8,000 / 16,000 (4 / 8 / 16 rollouts per prompt if split uniformly). Each
``allocate`` call is timed with ``time.perf_counter`` after one warm-up call; the median and p95 of 20 runs
are reported against the 50 ms goal, together with the expected effective-rollout ratio and expected
non-zero groups of the knapsack allocation vs the uniform split.

Two extra rows at budget 8,000 cover n_min = 0, where value(N) is not concave at N = 0..2: the normal
branch-and-bound path, and the exact DP fallback forced (``_MAX_NODES = 0``, the worst case, fewer runs).

Run: ``.venv/bin/python benchmarks/knapsack_speed.py`` (writes ``benchmarks/results/knapsack_speed.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rankrl.rollouts import knapsack  # noqa: E402
from rankrl.rollouts.knapsack import (  # noqa: E402
    allocate,
    allocate_uniform,
    expected_effective_rollout_ratio,
    expected_nonzero_groups,
    total_value,
)

GOAL_MS = 50.0


def _time_ms(fn, runs: int) -> tuple[float, float]:
    fn()  # warm-up: first-call allocation and page faults are not what we measure
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 95))


def run_case(p: np.ndarray, budget: int, n_min: int, n_max: int, runs: int) -> dict:
    """Time ``allocate`` on one instance and compare its allocation with the uniform split."""
    n_prompts = p.size
    knap = allocate(p, budget, n_min=n_min, n_max=n_max)
    unif = allocate_uniform(n_prompts, budget, n_min=n_min, n_max=n_max)
    median_ms, p95_ms = _time_ms(lambda: allocate(p, budget, n_min=n_min, n_max=n_max), runs)
    return {
        "prompts": n_prompts,
        "budget": budget,
        "n_min": n_min,
        "n_max": n_max,
        "runs": runs,
        "median_ms": median_ms,
        "p95_ms": p95_ms,
        "goal_ms": GOAL_MS,
        "meets_goal": median_ms < GOAL_MS,
        "effective_ratio_knapsack": expected_effective_rollout_ratio(p, knap),
        "effective_ratio_uniform": expected_effective_rollout_ratio(p, unif),
        "nonzero_groups_knapsack": expected_nonzero_groups(p, knap),
        "nonzero_groups_uniform": expected_nonzero_groups(p, unif),
        "value_knapsack": total_value(p, knap),
        "value_uniform": total_value(p, unif),
        "rollouts_per_prompt_max": int(knap.max()),
        "prompts_at_n_min": int((knap == n_min).sum()),
        "path": "greedy" if n_min > 0 else "branch-and-bound",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "knapsack_speed.json")
    args = parser.parse_args(argv)

    p = np.random.default_rng(args.seed).beta(0.5, 0.5, args.prompts)
    budgets = (4 * args.prompts, 8 * args.prompts, 16 * args.prompts)
    rows = [run_case(p, budget, 2, 64, args.runs) for budget in budgets]
    rows.append(run_case(p, budgets[1], 0, 64, args.runs))
    nodes, knapsack._MAX_NODES = knapsack._MAX_NODES, 0  # force the DP fallback: its worst-case cost
    try:
        rows.append(run_case(p, budgets[1], 0, 64, max(3, args.runs // 4)) | {"path": "dp-fallback (forced)"})
    finally:
        knapsack._MAX_NODES = nodes

    header = (
        f"{'prompts':>7} {'budget':>7} {'n_min..n_max':>12} {'median ms':>9} {'p95 ms':>8} {'< 50 ms':>7} "
        f"{'eff. ratio knap/unif':>20} {'nonzero groups knap/unif':>24}  path"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['prompts']:>7} {r['budget']:>7} {str(r['n_min']) + '..' + str(r['n_max']):>12} "
            f"{r['median_ms']:>9.2f} {r['p95_ms']:>8.2f} {'yes' if r['meets_goal'] else 'no':>7} "
            f"{r['effective_ratio_knapsack']:>9.3f} / {r['effective_ratio_uniform']:<8.3f} "
            f"{r['nonzero_groups_knapsack']:>11.1f} / {r['nonzero_groups_uniform']:<10.1f} {r['path']}"
        )

    result = {
        "benchmark": "knapsack_speed",
        "date": datetime.now().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "setup": {
            "p_distribution": "Beta(0.5, 0.5)",
            "seed": args.seed,
            "timer": "time.perf_counter, 1 warm-up call, median and p95 over runs",
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Calibrate the RolloutBudget sim against a live GRPO run, then compare allocators in the calibrated sim with the
live numbers of ``benchmarks/rollout_budget_live.py`` (same shape: 32-prompt pool, 4 prompts x 8 rollouts).

    python benchmarks/rollout_budget_live.py --skip-smollm2   # creates the warmed-up tiny-qwen checkpoint
    python benchmarks/rollout_budget_calibrated.py

Writes ``benchmarks/results/rollout_budget_calibrated.json``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    import rankrl  # noqa: F401  (registers the envs)
    from rankrl.atomic import atomic_write_text
    from rankrl.models import cache_dir
    from rankrl.rollouts.calibrate import calibrate_sim
    from rankrl.rollouts.env import DIFFICULTY_MIXES, RolloutBudgetEnv

    torch.set_num_threads(1)
    model = cache_dir() / "tiny-qwen-arith-sft-1500"
    if not (model / "config.json").exists():
        raise SystemExit(f"{model} is missing: run benchmarks/rollout_budget_live.py first (it trains the warm-up)")
    shape = dict(prompts_per_round=4, rollouts_per_prompt=8, n_min=2, n_max=32)
    start = time.perf_counter()
    cfg = calibrate_sim(dict(model=str(model), task="arith", n_prompts=32, max_completion_length=6, **shape),
                        rounds=60, seed=0, transfer_rate=0.0)  # fmt: skip
    seconds = time.perf_counter() - start
    live = json.loads((RESULTS / "rollout_budget_live.json").read_text())["parts"]["tiny_arith"]["summary"]
    rows = {}
    for name in ("uniform", "knapsack", "oracle"):
        rows[name] = {"live_200": live.get(name, {}).get("grpo/effective_rollout_ratio", [float("nan")])[0]}
        for horizon in (60, 200):  # the calibration horizon, and the live benchmark's
            per_seed = []
            for seed in range(5):
                env = RolloutBudgetEnv("sim", sim=cfg, rounds=horizon, history_rounds=0, **shape)
                env.reset(seed=seed)
                rewards = [env.step_allocation(env.baseline_allocation(name))[1] for _ in range(horizon)]
                per_seed.append(float(np.mean(rewards[horizon // 4 :])))  # like the live summary: skip a quarter
            rows[name][f"sim_{horizon}"] = (float(np.mean(per_seed)), float(np.std(per_seed)))
    print(f"calibrated in {seconds:.1f} s from 60 live uniform rounds: {cfg}, mix {DIFFICULTY_MIXES[cfg.difficulty]}")
    print(f"{'allocator':<10}{'sim, 60 rounds':>22}{'sim, 200 rounds':>22}{'live, 200 rounds':>18}")
    for name, r in rows.items():
        (m60, s60), (m200, s200) = r["sim_60"], r["sim_200"]
        print(f"{name:<10}{m60:>14.3f} +- {s60:.3f}{m200:>14.3f} +- {s200:.3f}{r['live_200']:>18.3f}")
    result = {"benchmark": "rollout_budget_calibrated", "date": datetime.now().isoformat(),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
              "calibration": {"seconds": seconds, "live_rounds": 60, "sim_config": {k: getattr(cfg, k) for k in
                              cfg.__dataclass_fields__}, "mix": DIFFICULTY_MIXES[cfg.difficulty]},
              "effective_rollout_ratio": rows}  # fmt: skip
    atomic_write_text(RESULTS / "rollout_budget_calibrated.json", json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

"""Does compute follow rank? Measured training-step time and peak memory of ``FineTuneRun`` at several ranks.

``RankedLoRA`` (:mod:`rankrl.ranks.lora`) keeps ``r_max`` directions per module so a rank change keeps weights and
optimizer state, but its forward computes only the active ``r`` directions (slices of ``A`` and ``B``) and skips
the adapter of a rank-0 module. This benchmark measures what that buys on the packaged MiniLM-L6 (``minilm``,
offline; LoRA on all 36 projections, ``r_max`` 8, batch 16, sequence 64, the embedded ``default`` task, one CPU
thread): for uniform rank 0, 1, 2, 4, 8 and attention-only (q, k, v, o at rank 8, FFN off) it times
``--steps`` optimizer steps (after ``--warmup`` untimed ones; median of per-step ``time.perf_counter`` times) and
measures the peak of live CPU memory during one step with ``torch.profiler`` (``profile_memory=True``: the running
sum of every allocation and free the step makes, i.e. activations, gradients and optimizer temporaries above what
was allocated before the step). The whole step includes the frozen base model's forward and the backward through
it (needed by any adapter; at rank 0 everywhere only the head trains, so the backward stops there), so the
adapter's own share is measured apart: forward + backward of the LoRA updates of all 36 modules on the same
tokens, as ``RankedLoRA`` computes them now (slices, rank 0 skipped) and as the old 0/1 mask on ``r_max`` did.
Next to them: the adapter FLOPs per token that :mod:`rankrl.ranks.costs` counts (forward + backward) and the
ratio (adapter time relative to uniform 8) / (counted FLOPs relative to uniform 8): 1.0 = time follows the count.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/rank_compute.py`` (about 2 minutes on one core; writes
``benchmarks/results/rank_compute.json`` and ``.png``).
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rankrl.ranks.costs import allocation_cost  # noqa: E402
from rankrl.ranks.finetune import FineTuneConfig, FineTuneRun  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ATTENTION = ("q", "k", "v", "o")


def allocations(targets) -> dict[str, dict[str, int]]:
    out = {f"uniform {r}": {t.name: r for t in targets} for r in (0, 1, 2, 4, 8)}
    out["attention-only 8"] = {t.name: (8 if t.kind in ATTENTION else 0) for t in targets}
    return out


def peak_step_bytes(run: FineTuneRun) -> int:
    """Peak of live CPU bytes allocated during one optimizer step (above the level before it)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run.advance(1)
    # self (not inclusive) bytes: an op's allocations once, frees as the negative "[memory]" events
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = np.cumsum([m for _, m in events]) if events else np.zeros(1)
    return int(max(live.max(), 0))


def adapter_ms(targets, ranks: dict[str, int], tokens: int, r_max: int, masked: bool, repeats: int = 15) -> float:
    """Forward + backward of the LoRA update alone (every module, ``tokens`` rows), fastest of ``repeats`` (the
    least disturbed by other processes on a shared machine): sliced
    to the active rank and skipped at rank 0 (RankedLoRA now), or at r_max times a 0/1 mask (the old hook)."""
    g = torch.Generator().manual_seed(0)
    mods = [(torch.randn(tokens, t.in_features, generator=g), torch.randn(r_max, t.in_features, generator=g,
             requires_grad=True), torch.randn(t.out_features, r_max, generator=g, requires_grad=True), ranks[t.name])
            for t in targets]  # fmt: skip
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, A, B, r in mods:
            if masked:
                mask = torch.zeros(r_max)
                mask[:r] = 1.0
                out = torch.nn.functional.linear(torch.nn.functional.linear(x, A) * mask, B)
            elif r == 0:
                continue
            else:
                out = torch.nn.functional.linear(torch.nn.functional.linear(x, A[:r]), B[:, :r])
            out.sum().backward()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.min(times))


def measure(args, ranks: dict[str, int], shared) -> dict:
    cfg = FineTuneConfig(model="minilm", task="default", r_max=8, batch_size=args.batch_size,
                         max_length=args.max_length, steps=args.warmup + args.steps + 2, eval_every=0,
                         max_eval=16, seed=0, threads=args.threads)  # fmt: skip
    run = FineTuneRun(cfg, ranks=ranks, task=shared.get("task"))
    shared.setdefault("task", run.task)
    run.advance(args.warmup)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        run.advance(1)
        times.append(time.perf_counter() - t0)
    peak = peak_step_bytes(run)
    cost = allocation_cost(run.targets, ranks)
    tokens = args.batch_size * args.max_length
    return {"step_ms": 1e3 * float(np.median(times)), "step_ms_iqr": 1e3 * float(np.subtract(*np.percentile(
            times, [75, 25]))), "peak_mb": peak / 2**20, "params": cost.params, "flops_per_token": cost.flops,
            "active_modules": cost.active_modules,
            "adapter_ms": adapter_ms(run.targets, ranks, tokens, cfg.r_max, masked=False),
            "adapter_ms_old_mask": adapter_ms(run.targets, ranks, tokens, cfg.r_max, masked=True)}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps per allocation")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "rank_compute.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shared: dict = {}
    probe = FineTuneRun(FineTuneConfig(model="minilm", task="default", r_max=8, steps=1, eval_every=0, max_eval=16,
                                       threads=args.threads))  # fmt: skip
    shared["task"] = probe.task
    plan = allocations(probe.targets)
    del probe
    rows = {}
    t_all = time.perf_counter()
    for name, ranks in plan.items():
        rows[name] = measure(args, ranks, shared)
        print(f"{name:<18} {rows[name]['step_ms']:8.1f} ms  peak {rows[name]['peak_mb']:7.1f} MB", flush=True)
    base, top = rows["uniform 0"], rows["uniform 8"]
    for r in rows.values():
        r["extra_ms"] = r["step_ms"] - base["step_ms"]
        r["extra_peak_mb"] = r["peak_mb"] - base["peak_mb"]
    for r in rows.values():
        flops_rel = r["flops_per_token"] / top["flops_per_token"]
        r["flops_rel_r8"] = flops_rel
        r["adapter_rel_r8"] = r["adapter_ms"] / top["adapter_ms"]
        r["ratio"] = r["adapter_rel_r8"] / flops_rel if flops_rel > 0 else float("nan")
    out = {"benchmark": "rank_compute", "model": "minilm", "modules": len(plan["uniform 0"]), "r_max": 8,
           "batch_size": args.batch_size, "max_length": args.max_length, "steps": args.steps, "warmup": args.warmup,
           "threads": args.threads, "seconds": time.perf_counter() - t_all, "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "date": datetime.now().isoformat(timespec="seconds"),
           "rows": rows}  # fmt: skip
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(table(out))
    plot(out, path.with_suffix(".png"))
    print(f"-> {path} (+ .png)")
    return 0


def table(out: dict) -> str:
    lines = ["| allocation | params | adapter FLOPs/token (counted) | train step (ms, median +- IQR/2) | peak step "
             "memory (MB) | adapter fwd+bwd (ms, best of 15) | same, old 0/1 mask at r_max (ms) | adapter time / "
             "FLOPs, rel. to uniform 8 |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in out["rows"].items():
        ratio = "-" if not np.isfinite(r["ratio"]) else f"{r['ratio']:.2f}"
        lines.append(f"| {name} | {r['params']:,} | {r['flops_per_token']:,} | {r['step_ms']:.1f} +- "
                     f"{r['step_ms_iqr'] / 2:.1f} | {r['peak_mb']:.1f} | {r['adapter_ms']:.1f} | "
                     f"{r['adapter_ms_old_mask']:.1f} | {ratio} |")  # fmt: skip
    return "\n".join(lines)


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(out["rows"])
    rows = [out["rows"][n] for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.array([r["flops_per_token"] for r in rows]) / 1e6
    for ax, key, label in ((axes[0], "step_ms", "step time (ms, median)"), (axes[1], "peak_mb", "peak memory (MB)")):
        ax.scatter(x, [r[key] for r in rows])
        for xi, r, n in zip(x, rows, names, strict=True):
            ax.annotate(n, (xi, r[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("counted adapter FLOPs per token (M)")
        ax.set_ylabel(label)
    fig.suptitle(f"MiniLM-L6, {out['modules']} LoRA modules, batch {out['batch_size']} x {out['max_length']}, "
                 f"{out['threads']} thread: compute follows rank")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

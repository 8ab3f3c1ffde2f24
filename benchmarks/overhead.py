"""Overhead of ``FineTuneRun`` (rank-mask hooks, ``_next_batch``, JSONL logging) over a plain PEFT training loop.

Both sides train the packaged MiniLM (``load_model("minilm")``) on the same task with the same LoRA rank on the
same target modules, the same AdamW param groups / learning rates and the same ``LambdaLR`` schedule, and see
the same batches in the same order (batch size, sequence length, rows). Tokenisation is outside the timed
region on both sides: the run encodes its split in ``__init__``, and the plain loop gets the batches of the
run's own ``_next_batch`` sequence, precomputed. Inside the timed region the run still pays its own
``_next_batch`` indexing (the plain loop reads ready batches: a bias against ``FineTuneRun``, if anything).

* ``FineTuneRun`` side: ``ranks=uniform:R``, ``r_max=R``, ``advance(k)`` with a ``Tracker(use_wandb=False)``:
  its JSONL logging (one row per ``advance`` call, i.e. per block) is timed; W&B is off, so W&B start-up and
  per-log cost are excluded.
* plain side: ``peft.get_peft_model(model, LoraConfig(r=R, ...))`` and ``loss.backward(); opt.step();
  sched.step(); opt.zero_grad(set_to_none=True)``.
* ``--also-masked``: a third row, ``FineTuneRun`` with ``r_max=16`` and rank 8: it computes all 16 directions
  (half masked to zero), so it does more arithmetic by design; it is reported, not held to the goal.

Method: all models are built once in one process; a correctness check (not timed) copies the plain side's
initial LoRA A/B and classifier weights into each run and compares the losses of the first two steps
(same dropout seed): step 1 checks base model + head (LoRA B starts at 0), step 2 the LoRA scaling, masks,
optimizer and schedule; the sides then stay in lockstep. Exit status 1 if the check fails. Then one
warm-up block per side, then ``--rounds`` rounds of one ``--steps-per-block`` block per side, the order
reversed every other round (A B, B A, ...) to cancel drift; each block is timed with ``time.perf_counter``.
``torch.set_num_threads(1)`` by default (``--threads``) to keep noise low on a small shared machine.
``ratio`` = total timed ``FineTuneRun`` time / total timed plain time; goal <= 1.03.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/overhead.py [--also-masked]``
(writes ``benchmarks/results/overhead.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rankrl.models import load_model  # noqa: E402
from rankrl.ranks.finetune import FineTuneConfig, FineTuneRun  # noqa: E402
from rankrl.tasks import load_task  # noqa: E402
from rankrl.tracking import Tracker  # noqa: E402

GOAL = 1.03
CHECK_STEPS = 2
CHECK_TOL = 1e-5


def build_run(args, task, rank: int, r_max: int, steps: int, run_dir: Path) -> FineTuneRun:
    cfg = FineTuneConfig(model=args.model, task=args.task, ranks=f"uniform:{rank}", r_max=r_max,
                         batch_size=args.batch_size, max_length=args.max_length, steps=steps,
                         threads=args.threads, seed=args.seed)  # fmt: skip
    loaded = load_model(args.model, num_labels=max(task.num_labels, 2), seed=args.seed)
    return FineTuneRun(cfg, loaded=loaded, task=task, tracker=Tracker(run_dir, use_wandb=False))


def build_plain(args, task, run: FineTuneRun):
    """A plain PEFT model + AdamW + LambdaLR configured like ``run`` (same targets, groups, lr, schedule)."""
    from peft import LoraConfig, get_peft_model

    cfg = run.config
    loaded = load_model(args.model, num_labels=max(task.num_labels, 2), seed=args.seed)
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=args.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=[t.name for t in run.targets], task_type="SEQ_CLS")  # fmt: skip
    model = get_peft_model(loaded.model, lora)
    adapters = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    heads = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    groups = [{"params": adapters, "lr": cfg.lr}]
    if heads:
        groups.append({"params": heads, "lr": cfg.head_lr or cfg.lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(step: int) -> float:  # FineTuneRun._lr_factor
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return max(0.0, (cfg.steps - step) / max(cfg.steps - cfg.warmup_steps, 1))

    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def precompute_batches(run: FineTuneRun, n: int) -> list[dict[str, torch.Tensor]]:
    """The run's next ``n`` batches (its own ``_next_batch``), then rewind the run to the start."""
    out = [run._next_batch() for _ in range(n)]
    run.state.epoch, run.state.position = 0, 0
    run._order = run._epoch_order(0)
    return out


@torch.no_grad()
def copy_trainable(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """Copy src's trainable weights into dst by name; a larger dst (r_max > r) gets them in its first directions."""
    dst_params = dict(dst.named_parameters())
    for name, p in src.named_parameters():
        if p.requires_grad:
            target = dst_params[name]
            target[tuple(slice(0, s) for s in p.shape)] = p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--task", default="default")
    ap.add_argument("--steps-per-block", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--r-max", type=int, default=None, help="r_max of the masked row (default 16; implies it)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--also-masked", action="store_true", help="also time FineTuneRun at r_max=16 with rank R")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "overhead.json"))
    args = ap.parse_args(argv)
    r_max = args.rank  # the row held to the goal: no masked directions
    masked, masked_r_max = args.also_masked or args.r_max is not None, args.r_max or 16
    spb, rounds = args.steps_per_block, args.rounds
    torch.set_num_threads(args.threads)
    total_steps = CHECK_STEPS + spb * (rounds + 1)  # check + warm-up + timed blocks, per side

    task = load_task(args.task, seed=args.seed)
    tmp = tempfile.TemporaryDirectory(prefix="rankrl-overhead-")
    runs = {"finetune": build_run(args, task, args.rank, r_max, total_steps, Path(tmp.name) / "finetune")}
    if masked:
        runs["masked"] = build_run(args, task, args.rank, masked_r_max, total_steps, Path(tmp.name) / "masked")
    batches = precompute_batches(runs["finetune"], total_steps)
    model, opt, sched = build_plain(args, task, runs["finetune"])
    cursor = [0]

    def plain_steps(k: int) -> list[float]:
        model.train()
        losses = []
        for _ in range(k):
            loss = model(**batches[cursor[0]]).loss
            cursor[0] += 1
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses

    # -- correctness (not timed): same initial weights, same batches, same dropout seed -> same losses
    check = {}
    for run in runs.values():
        copy_trainable(model, run.model)
    plain_losses = []
    for i in range(CHECK_STEPS):
        torch.manual_seed(1000 + i)
        plain_losses += plain_steps(1)
    for name, run in runs.items():
        losses = []
        for i in range(CHECK_STEPS):
            torch.manual_seed(1000 + i)
            losses.append(run.advance(1)["train/loss"])
        diff = float(np.max(np.abs(np.array(losses) - np.array(plain_losses))))
        check[name] = {"plain_losses": plain_losses, "run_losses": losses, "max_abs_diff": diff,
                       "ok": diff <= CHECK_TOL}  # fmt: skip
        print(
            f"check {name}: first {CHECK_STEPS} losses plain {[f'{x:.6f}' for x in plain_losses]} "
            f"run {[f'{x:.6f}' for x in losses]} max|diff| {diff:.2e} -> {'OK' if diff <= CHECK_TOL else 'FAIL'}"
        )

    # -- timing: warm-up block per side, then rounds with alternating order
    sides = {"plain": plain_steps, **{n: (lambda k, r=r: r.advance(k)) for n, r in runs.items()}}
    order = ["finetune", "plain"] + (["masked"] if masked else [])
    for fn in sides.values():
        fn(spb)
    blocks: dict[str, list[float]] = {n: [] for n in order}
    for rnd in range(rounds):
        for name in order if rnd % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            sides[name](spb)
            blocks[name].append(time.perf_counter() - start)
    for name, run in runs.items():
        assert run.state.step == total_steps, f"{name} did {run.state.step} steps, expected {total_steps}"
        run.tracker.finish()
    assert cursor[0] == total_steps
    tmp.cleanup()

    total = {n: float(sum(b)) for n, b in blocks.items()}
    median_ms = {n: float(np.median(b)) / spb * 1e3 for n, b in blocks.items()}
    ratio = total["finetune"] / total["plain"]
    met = ratio <= GOAL
    labels = {"plain": f"plain PEFT r={args.rank}", "finetune": f"FineTuneRun r={args.rank} r_max={r_max}",
              "masked": f"FineTuneRun r={args.rank} r_max={masked_r_max} (masked)"}  # fmt: skip
    print(
        f"\n{rounds} rounds x {spb} steps per side (after 1 warm-up block), batch {args.batch_size}, "
        f"max_length {args.max_length}, torch threads {args.threads}, W&B off (JSONL logging timed)"
    )
    print(f"{'side':<42}{'total s':>10}{'ms/step (median)':>18}{'vs plain':>10}")
    for n in order:
        print(f"{labels[n]:<42}{total[n]:>10.3f}{median_ms[n]:>18.2f}{total[n] / total['plain']:>10.3f}")
    print(f"ratio {ratio:.3f}")
    print(f"goal <= {GOAL:.2f}: {'met' if met else 'NOT met'}")

    result = {
        "benchmark": "overhead",
        "date": datetime.now().isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "config": {"model": args.model, "task": args.task, "rank": args.rank, "r_max": r_max,
                   "masked_r_max": masked_r_max if masked else None, "batch_size": args.batch_size,
                   "max_length": args.max_length, "steps_per_block": spb, "rounds": rounds, "seed": args.seed,
                   "timer": "time.perf_counter per block; 1 warm-up block per side; order reversed each round",
                   "wandb": "off (use_wandb=False): W&B start-up and logging excluded; JSONL logging timed"},
        "check": check,
        "block_seconds": blocks,
        "total_seconds": total,
        "median_ms_per_step": median_ms,
        "ratio": ratio,
        "ratio_masked": total["masked"] / total["plain"] if masked else None,
        "goal": GOAL,
        "met": met,
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp_path, out)
    print(f"wrote {out}")
    return 0 if all(c["ok"] for c in check.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

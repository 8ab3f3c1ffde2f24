"""``rankrl finetune``: drive a :class:`FineTuneRun` end to end with a progress bar, periodic evaluation,
atomic checkpoints, W&B/JSONL logging, a PNG of the curves and a PEFT adapter export."""

from __future__ import annotations

from pathlib import Path

from rankrl.ranks.finetune import CHECKPOINT, FineTuneConfig, FineTuneRun


def run_finetune(
    config: FineTuneConfig,
    *,
    out: str = "runs/finetune",
    wandb: bool = True,
    resume: bool = False,
    progress: bool = True,
) -> int:
    """Run (or resume) a fine-tune; returns 0 on success, 1 if the loss went NaN."""
    from tqdm.auto import tqdm

    from rankrl.plots import plot_curves
    from rankrl.tracking import Tracker, read_metrics

    out_dir = Path(out)
    ckpt = out_dir / CHECKPOINT
    if resume and not ckpt.exists():
        raise SystemExit(f"--resume: no checkpoint at {ckpt}; run without --resume first")
    tracker = Tracker(out_dir, config=vars(config) | {"job": "finetune"}, use_wandb=wandb, resume=resume)
    try:
        run = FineTuneRun.resume(ckpt, tracker=tracker) if resume else FineTuneRun(config, tracker=tracker)
        config = run.config
        task = run.task
        print(
            f"model {config.model} | task {task.name} ({task.kind}, {len(task.splits['train'])} train / "
            f"{len(task.splits['eval'])} eval rows{f', {task.num_labels} labels' if task.num_labels else ''}) | "
            f"{len(run.targets)} adapted modules, r_max {config.r_max}"
        )
        costs = run.costs(log=True)
        first = run.evaluate() if run.state.step == 0 else dict(run.state.last_eval)
        if first:
            print(f"step {run.state.step}: {_fmt(first)}")
        every = config.eval_every or config.steps
        bar = tqdm(
            total=config.steps, initial=run.state.step, desc="finetune", disable=not progress, unit="step"
        )
        nan = False
        while not run.finished:
            k = min(every - run.state.step % every, config.steps - run.state.step)
            train = run.advance(k, progress=bar)
            if train.get("train/nan"):
                nan = True
                bar.write(f"step {run.state.step}: non-finite loss; stopping (lower --lr)")
                break
            metrics = run.evaluate()
            bar.write(f"step {run.state.step}: train/loss {train['train/loss']:.4f} | {_fmt(metrics)}")
            run.save_checkpoint(ckpt)
        bar.close()
        final = dict(run.state.last_eval)
        run.lora.export(out_dir / "adapter")
        png = plot_curves(read_metrics(out_dir), ["train/loss", "quality/eval_loss", "quality/accuracy"],
                          out_dir / "curves.png", title=f"{config.model} on {task.name}")  # fmt: skip
        tracker.image("curves", png, step=run.state.step)
        summary = {"steps": run.state.step, **{f"start/{k}": v for k, v in first.items()}, **final, **costs}
        tracker.summary(summary)
        print("\nresult")
        for key in ("quality/eval_loss", "quality/accuracy"):
            if key in final:
                start = first.get(key, float("nan"))
                print(f"  {key:<22} {start:>10.4f} -> {final[key]:.4f}")
        print("costs (active allocation)")
        for key in ("cost/params", "cost/flops", "cost/optimizer_bytes", "cost/bits"):
            print(f"  {key:<22} {costs[key]:>14,.0f}")
        print(f"adapter (PEFT) -> {out_dir / 'adapter'}   curves -> {png}")
        return 1 if nan else 0
    finally:
        tracker.finish()


def _fmt(metrics: dict[str, float]) -> str:
    return " | ".join(f"{k} {v:.4f}" for k, v in metrics.items())

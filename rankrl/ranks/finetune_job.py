"""``rankrl finetune``: drive a :class:`FineTuneRun` end to end with a progress bar, periodic evaluation,
atomic checkpoints, W&B/JSONL logging, a PNG of the curves and a PEFT adapter export.

``--resume`` continues ``<out>/checkpoint.pt`` only with the checkpoint's run settings (a differing flag is refused
by name, :func:`rankrl.resume.check_same_settings`) and first cuts ``metrics.jsonl`` back to the checkpoint's
step. SIGINT / SIGTERM stop between two optimizer steps: the checkpoint is written and the command exits 130.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from rankrl.ranks.finetune import CHECKPOINT, RESUMABLE_CHANGES, FineTuneConfig, FineTuneRun, checkpoint_config
from rankrl.resume import check_same_settings, truncate_metrics


def run_finetune(
    config: FineTuneConfig,
    *,
    out: str = "runs/finetune",
    wandb: bool = True,
    resume: bool = False,
    progress: bool = True,
) -> int:
    """Run (or resume) a fine-tune; returns 0 on success, 1 if the loss went NaN, 130 when stopped by a signal
    (checkpoint saved: continue with ``resume=True``)."""
    from rankrl.interrupt import stop_on_signals

    with stop_on_signals() as stop:
        return _run_finetune(config, out=out, wandb=wandb, resume=resume, progress=progress, stop=stop)


def _run_finetune(config: FineTuneConfig, *, out: str, wandb: bool, resume: bool, progress: bool, stop) -> int:
    from tqdm.auto import tqdm

    from rankrl.interrupt import EXIT_INTERRUPTED
    from rankrl.plots import plot_curves
    from rankrl.tracking import Tracker, read_metrics

    out_dir = Path(out)
    ckpt = out_dir / CHECKPOINT
    if resume:
        if not ckpt.exists():
            raise SystemExit(f"--resume: no checkpoint at {ckpt}; run without --resume first")
        check_same_settings(checkpoint_config(ckpt), asdict(config), RESUMABLE_CHANGES, out=out_dir)
    tracker = None
    try:
        if resume:
            run = FineTuneRun.resume(ckpt, config=config)
            if cut := truncate_metrics(out_dir, run.state.step):
                print(f"metrics.jsonl: dropped {cut} rows logged after the checkpoint (step {run.state.step})")
        tracker = Tracker(out_dir, config=vars(config) | {"job": "finetune"}, use_wandb=wandb, resume=resume)
        if resume:
            run.tracker = tracker
        else:
            run = FineTuneRun(config, tracker=tracker)
        task = run.task
        print(
            f"model {config.model} | task {task.name} ({task.kind}, {len(task.splits['train'])} train / "
            f"{len(task.splits['eval'])} eval rows{f', {task.num_labels} labels' if task.num_labels else ''}) | "
            f"{len(run.targets)} adapted modules, r_max {config.r_max}"
        )
        costs = run.costs(log=not resume)  # a resumed run logged them already (same ranks)
        first = dict(run.state.last_eval) if resume and run.state.last_eval else run.evaluate()
        print(f"step {run.state.step}: {_fmt(first)}", flush=True)
        every = config.eval_every or config.steps
        bar = tqdm(
            total=config.steps, initial=run.state.step, desc="finetune", disable=not progress, unit="step"
        )
        nan = False
        while not run.finished and not stop:
            k = min(every - run.state.step % every, config.steps - run.state.step)
            train = run.advance(k, progress=bar, stop=stop)
            if train.get("train/nan"):
                nan = True
                bar.write(f"step {run.state.step}: non-finite loss; stopping (lower --lr)")
                break
            if stop:
                break
            metrics = run.evaluate()
            bar.write(f"step {run.state.step}: train/loss {train['train/loss']:.4f} | {_fmt(metrics)}")
            run.save_checkpoint(ckpt)
        bar.close()
        if stop:
            run.save_checkpoint(ckpt)
            print(f"\n{stop.name}: stopped at step {run.state.step} of {config.steps}; checkpoint -> {ckpt}. Continue "
                  "with the same flags and --resume", flush=True)  # fmt: skip
            return EXIT_INTERRUPTED
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
        if tracker is not None:
            tracker.finish()


def _fmt(metrics: dict[str, float]) -> str:
    return " | ".join(f"{k} {v:.4f}" for k, v in metrics.items())

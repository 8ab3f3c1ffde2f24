"""Where every metric goes: W&B (offline unless the user configured it) plus a JSONL file that tests and
plots read back (the PNGs themselves are drawn by :mod:`rankrl.plots`).

wandb 0.31 offline runs keep metrics only inside a binary ``.wandb`` file, so the JSONL copy is the record we
assert on. Metric names are namespaced as in ARCHITECTURE.md (``quality/``, ``cost/``, ``rank/``, ...).

TRL jobs (``rankrl rollouts train``, ``rankrl rerank train``) log through :func:`trainer_metrics_callback` (which
cuts ``metrics.jsonl`` back to a resumed checkpoint's step, :func:`rankrl.resume.truncate_metrics`) and stop through
:func:`trainer_stop_callback`, which turns a SIGINT / SIGTERM (:func:`rankrl.interrupt.stop_on_signals`) into a
checkpoint and a clean stop.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rankrl.atomic import atomic_write_text


def wandb_mode() -> str:
    """``$WANDB_MODE`` if set; ``online`` when the user has W&B credentials; ``offline`` otherwise."""
    if mode := os.environ.get("WANDB_MODE"):
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class Tracker:
    """Log metrics to ``<run_dir>/metrics.jsonl`` and, unless disabled, to W&B.

    Args:
        run_dir: directory of this run (created).
        config: run configuration stored with the W&B run and in ``config.json``.
        project: W&B project.
        name: W&B run name (default: the run directory's name).
        use_wandb: False keeps only the JSONL (W&B import and start-up cost nothing then).
        resume: append to an existing JSONL (a resumed run) instead of starting it anew.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: Mapping[str, Any] | None = None,
        *,
        project: str = "rankrl",
        name: str | None = None,
        use_wandb: bool = True,
        resume: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if not resume:
            self.path.write_text("")
        if config is not None:
            atomic_write_text(self.run_dir / "config.json", json.dumps(dict(config), indent=1, default=str))
        self._file = self.path.open("a")
        self.wandb_run = None
        if use_wandb:
            import wandb

            self.wandb_run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", project),
                name=name or self.run_dir.name,
                dir=os.environ.get("WANDB_DIR", str(self.run_dir)),
                config=dict(config or {}),
                mode=wandb_mode(),
                reinit="finish_previous",
            )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record ``metrics`` at ``step`` (numbers only in the JSONL; W&B also takes tables and images)."""
        row = {"step": int(step)}
        for k, v in metrics.items():
            if getattr(v, "ndim", None) == 0:  # numpy / torch scalars
                v = v.item()
            if isinstance(v, numbers.Real) and not isinstance(v, bool):
                row[k] = v
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(dict(metrics), step=int(step))

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Final numbers: ``summary.json`` and the W&B run summary."""
        atomic_write_text(self.run_dir / "summary.json", json.dumps(dict(metrics), indent=1, default=str))
        if self.wandb_run is not None:
            self.wandb_run.summary.update(dict(metrics))

    def image(self, key: str, path: str | os.PathLike, step: int) -> None:
        """Attach a PNG (already written to disk) to the W&B run."""
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Image(str(path))}, step=int(step))

    def finish(self) -> None:
        self._file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


def trainer_metrics_callback(out_dir: str | os.PathLike, on_log: Any = None, *, resume_step: int | None = None) -> Any:
    """A ``transformers.TrainerCallback`` writing every Trainer log row (TRL's reward, loss, ...) to
    ``out_dir/metrics.jsonl`` on the main process; ``on_log(args)`` runs after each row (e.g. extra W&B panels).
    The Trainer's own ``report_to`` still decides W&B; this file is what tests and benchmarks read back.

    A fresh run (``resume_step`` None) starts the file anew; a resumed one first cuts it back to the checkpoint's
    step (:func:`rankrl.resume.truncate_metrics`) and appends, so the curve continues without repeated steps. The
    file is opened when training begins, on the main process only."""
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        tracker: Tracker | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            if resume_step is not None:
                from rankrl.resume import truncate_metrics

                truncate_metrics(Path(out_dir) / "metrics.jsonl", resume_step)
            self.tracker = Tracker(out_dir, use_wandb=False, resume=resume_step is not None)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.tracker is None or not logs:
                return
            self.tracker.log(logs, step=state.global_step)
            if on_log is not None:
                on_log(args)

        def on_train_end(self, args, state, control, **kwargs):
            if self.tracker is not None:
                self.tracker.finish()
                self.tracker = None

    return MetricsJsonl()


def trainer_stop_callback(stop: Any, *, save: bool = True) -> Any:
    """A ``transformers.TrainerCallback`` that, once ``stop`` is truthy (a :class:`rankrl.interrupt.StopRequest`),
    ends training after the current optimizer step with a checkpoint (``control.should_save`` and
    ``control.should_training_stop``; the Trainer saves ``checkpoint-N`` even with ``save_strategy no``).
    ``save=False`` only stops (a stage that is re-run rather than resumed)."""
    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if stop:
                control.should_save = control.should_save or save
                control.should_training_stop = True
            return control

    return StopOnSignal()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` (a run directory works too)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

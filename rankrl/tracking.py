"""Where every metric goes: W&B (offline unless the user configured it) plus a JSONL file that tests and
plots read back (the PNGs themselves are drawn by :mod:`rankrl.plots`).

wandb 0.31 offline runs keep metrics only inside a binary ``.wandb`` file, so the JSONL copy is the record we
assert on. Metric names are namespaced as in ARCHITECTURE.md (``quality/``, ``cost/``, ``rank/``, ...).

TRL jobs (``rankrl rollouts train``, ``rankrl rerank train``) resume and stop through the helpers here too:
:func:`resume_checkpoint` resolves ``--resume_from_checkpoint``, :func:`check_run_args` refuses a resume whose
run-altering flags changed (against ``run_args.json`` in the output dir), :func:`truncate_metrics` cuts
``metrics.jsonl`` back to the checkpoint's step so no step appears twice, and :func:`trainer_stop_callback` turns a
SIGINT / SIGTERM (:func:`rankrl.interrupt.stop_on_signals`) into a checkpoint and a clean stop.
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
    step (:func:`truncate_metrics`) and appends, so the curve continues without repeated steps. The file is opened
    when training begins, on the main process only."""
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        tracker: Tracker | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            if resume_step is not None:
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


def truncate_metrics(path: str | os.PathLike, step: int) -> int:
    """Drop the rows of a ``metrics.jsonl`` logged after ``step`` (a resume from the checkpoint at ``step`` logs
    them again); atomic. Returns how many rows were dropped (0 when the file is absent).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = p.write_text("".join(json.dumps({"step": s}) + "\\n" for s in (1, 2, 3, 2)))
    >>> truncate_metrics(p, 1), [r["step"] for r in read_metrics(p)]
    (3, [1])
    """
    p = Path(path)
    if not p.is_file():
        return 0
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    keep = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(keep) != len(lines):
        atomic_write_text(p, "".join(line + "\n" for line in keep))
    return len(lines) - len(keep)


def resume_checkpoint(value: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint directory ``--resume_from_checkpoint`` names: a path, or ``true`` / ``last`` for the newest
    ``checkpoint-N`` in ``output_dir``; None for a fresh run. A missing checkpoint is an error, never a fresh run."""
    if value in (None, False, "", "false", "False", "none", "None"):
        return None
    if value in (True, "true", "True", "last"):
        from transformers.trainer_utils import get_last_checkpoint

        found = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
        if found is None:
            raise FileNotFoundError(f"--resume_from_checkpoint {value}: no checkpoint-N folder in {output_dir}; "
                                    "save some with --save_strategy steps --save_steps N")  # fmt: skip
        return found
    path = Path(str(value))
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: not a Trainer checkpoint (no trainer_state.json)")
    return str(path)


def checkpoint_step(checkpoint: str | os.PathLike) -> int:
    """The optimizer step a Trainer checkpoint was saved at (its ``trainer_state.json``)."""
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


#: GRPOConfig fields that change what a run computes: a resume must keep them (max_steps may grow)
GRPO_RUN_FLAGS = (
    "learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay", "adam_beta1", "adam_beta2",
    "adam_epsilon", "max_grad_norm", "optim", "seed", "data_seed", "per_device_train_batch_size",
    "gradient_accumulation_steps", "steps_per_generation", "generation_batch_size", "num_generations",
    "num_iterations", "max_completion_length", "max_prompt_length", "temperature", "top_p", "top_k", "min_p",
    "repetition_penalty", "beta", "epsilon", "epsilon_high", "loss_type", "scale_rewards", "reward_weights",
    "multi_objective_aggregation", "mask_truncated_completions", "importance_sampling_level", "bf16", "fp16",
)  # fmt: skip
RUN_ARGS_FILE = "run_args.json"


def grpo_run_flags(config: Any) -> dict[str, Any]:
    """The :data:`GRPO_RUN_FLAGS` of a ``GRPOConfig`` (those it has)."""
    return {name: getattr(config, name) for name in GRPO_RUN_FLAGS if hasattr(config, name)}


def check_run_args(output_dir: str | os.PathLike, run_args: Mapping[str, Any], *, resuming: bool) -> None:
    """Record a run's flags in ``output_dir/run_args.json`` (fresh run), or refuse a resume that changed any.

    ``run_args`` maps flag names (without ``--``) to values. On resume every recorded flag must have the same value
    (JSON round trip); a ``ValueError`` names each changed one with both values. A run dir without the file (made
    before it existed) resumes with a warning.
    """
    import warnings

    path = Path(output_dir) / RUN_ARGS_FILE
    now = json.loads(json.dumps(dict(run_args), default=str))
    if resuming and path.is_file():
        saved = json.loads(path.read_text())
        changed = [f"--{k} {saved[k]!r} -> {now.get(k)!r}" for k in saved if saved[k] != now.get(k)]
        if changed:
            raise ValueError(f"resuming {output_dir} with flags that change the run: {'; '.join(changed)}. Pass the "
                             f"values it was started with ({path}), or start a fresh run in another "
                             "--output_dir")  # fmt: skip
        return
    if resuming:
        warnings.warn(f"{path} is missing, so the resumed run's flags cannot be checked against the original ones",
                      stacklevel=2)  # fmt: skip
    atomic_write_text(path, json.dumps(now, indent=1))


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

"""Resuming a run safely, for every rankrl job (core: no domain imports).

* The run must be the run that was checkpointed: :func:`check_same_settings` (rankrl's own configs, against the
  checkpoint's config) and :func:`check_run_args` (TRL jobs, against ``run_args.json`` in the output dir) refuse a
  resume whose run-altering flags changed, naming each flag, instead of silently using either value.
* :func:`truncate_metrics` cuts ``metrics.jsonl`` back to the checkpoint's step, so a resumed run never logs a step
  twice.
* :func:`resume_checkpoint` / :func:`checkpoint_step` resolve ``--resume_from_checkpoint`` for TRL jobs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rankrl.atomic import atomic_write_text


def dotted(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"env": {"run": {"lr": 1}}}`` -> ``{"env.run.lr": 1}`` (how the flags name them).

    >>> dotted({"env": {"run": {"lr": 1}}, "out": "x"})
    {'env.run.lr': 1, 'out': 'x'}
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(dotted(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def settings_diff(saved: Mapping[str, Any], now: Mapping[str, Any],
                  may_change: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:  # fmt: skip
    """``{flag: (checkpoint's, now)}`` for every setting (dotted) that differs and is not in ``may_change``; both
    sides are compared as JSON (tuples and lists alike).

    >>> settings_diff({"lr": 1e-3, "threads": 1}, {"lr": 1e-2, "threads": 2}, {"threads"})
    {'lr': (0.001, 0.01)}
    """
    keep = set(may_change)
    theirs = dotted(json.loads(json.dumps(dict(saved), default=str)))
    mine = dotted(json.loads(json.dumps(dict(now), default=str)))
    return {k: (theirs.get(k), v) for k, v in mine.items() if k not in keep and theirs.get(k) != v} | {
        k: (v, None) for k, v in theirs.items() if k not in keep and k not in mine}


def check_same_settings(saved: Mapping[str, Any], now: Mapping[str, Any], may_change: Iterable[str], *,
                        out: str | os.PathLike) -> None:  # fmt: skip
    """Refuse (``SystemExit`` naming every differing flag) a resume whose settings differ from the checkpoint's in
    anything but ``may_change``."""
    may_change = sorted(set(may_change))
    if diff := settings_diff(saved, now, may_change):
        shown = ", ".join(f"--{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise SystemExit(f"--resume: settings differ from the checkpoint in {out} ({shown}); pass the checkpoint's "
                         f"values (only {', '.join(may_change)} may change on a resume) or use a new --out")


def truncate_metrics(path: str | os.PathLike, step: int) -> int:
    """Drop the rows of a ``metrics.jsonl`` (or a run directory's) logged after ``step`` (a resume from the
    checkpoint at ``step`` logs them again) and a half-written last line; atomic. Returns how many rows were dropped
    (0 when the file is absent).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = p.write_text("".join(json.dumps({"step": s}) + "\\n" for s in (1, 2, 3, 2)))
    >>> truncate_metrics(p, 1), [json.loads(line)["step"] for line in p.read_text().splitlines()]
    (3, [1])
    """
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        return 0
    lines = [line for line in p.read_text().splitlines() if line.strip()]
    keep = [line for line in lines if _step_of(line) <= step]
    if len(keep) != len(lines):
        atomic_write_text(p, "".join(line + "\n" for line in keep))
    return len(lines) - len(keep)


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:  # a half-written last line of a killed run: drop it
        return math.inf


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


#: TRL's GRPOConfig default of num_generations: any other value was set by the user (a --config file, code)
TRL_NUM_GENERATIONS_DEFAULT = 8


def check_num_generations(num_generations: int | None, rollouts: int, flag: str, command: str) -> None:
    """A rankrl GRPO job sets TRL's ``num_generations`` from its own rollout-count ``flag``: refuse a different
    explicit value (None: not given) instead of overwriting it without a word."""
    if num_generations is not None and int(num_generations) != rollouts:
        raise ValueError(f"--num_generations {num_generations} conflicts with {flag} {rollouts}: {command} sets TRL's "
                         f"num_generations from {flag}; pass {flag} {num_generations} instead")  # fmt: skip


def prepare_grpo_run(args: Any, config: Any, rollouts: int, flag: str, command: str) -> str | None:
    """What every rankrl GRPO job does before building its trainer: ``num_generations`` from the job's rollout count
    (a conflicting explicit value refused), the ``--resume_from_checkpoint`` folder resolved, and the run's flags
    recorded in (or, on resume, checked against) ``run_args.json``. Returns the checkpoint or None."""
    from dataclasses import asdict

    if config.num_generations != TRL_NUM_GENERATIONS_DEFAULT:  # set in a --config file or in code
        check_num_generations(config.num_generations, rollouts, flag, command)
    config.num_generations = rollouts
    resume = resume_checkpoint(config.resume_from_checkpoint, config.output_dir)
    check_run_args(config.output_dir, {**asdict(args), **grpo_run_flags(config)}, resuming=resume is not None)
    return resume


"""``rankrl finetune | train-policy | apply | baselines | convert-policy | collect-runs``: the rank domain's subcommands
(``rankrl.cli`` dispatches)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

from rankrl.args import parse_config
from rankrl.ranks.finetune import FineTuneConfig


@dataclass(frozen=True)
class FinetuneArgs(FineTuneConfig):
    """Run a live LoRA fine-tune with per-module ranks; prints metrics and costs, exports a PEFT adapter."""

    out: str = "runs/finetune"
    """run directory: metrics.jsonl, checkpoint.pt, adapter/ (PEFT), curves.png, summary.json"""
    wandb: bool = True
    """log to W&B (offline unless WANDB_MODE / credentials say otherwise)"""
    resume: bool = False
    """continue from <out>/checkpoint.pt (the run settings must equal the checkpoint's; threads, eval_every and
    eval_batch_size may change); Ctrl-C / SIGTERM save that checkpoint and exit 130"""
    progress: bool = True
    """show a progress bar"""


def cmd_finetune(argv: Sequence[str]) -> int:
    args = parse_config(FinetuneArgs, list(argv), prog="rankrl finetune")
    from rankrl.ranks.finetune_job import run_finetune

    config = FineTuneConfig(**{f.name: getattr(args, f.name) for f in fields(FineTuneConfig)})
    extra = {k: v for k, v in asdict(args).items() if k not in asdict(config)}
    return run_finetune(config, **extra)


def cmd_train_policy(argv: Sequence[str]) -> int:
    """``rankrl train-policy``: PPO rank allocator on LoRARank(-Sim), checkpoints/resume, live evaluation."""
    from rankrl.ranks.train import TrainPolicyConfig

    @dataclass(frozen=True)
    class TrainPolicyArgs(TrainPolicyConfig):
        surrogate: str | None = None
        """sim: fit the learned surrogate on this dataset of live runs (rankrl collect-runs, e.g.
        benchmarks/results/rank_runs.jsonl) instead of calibrating a learning curve from live probes"""

    TrainPolicyArgs.__doc__ = TrainPolicyConfig.__doc__
    config = parse_config(TrainPolicyArgs, list(argv), prog="rankrl train-policy")
    calibration = None
    if config.surrogate is not None:
        if config.backend != "sim":
            print("rankrl train-policy: --surrogate is the sim's curve; drop it or use --env_id "
                  "rankrl/LoRARank-Sim-v1", file=sys.stderr)  # fmt: skip
            return 2
        from rankrl.ranks.surrogate import learned_calibration

        calibration = learned_calibration(config.surrogate, config.run)
    from rankrl.interrupt import EXIT_INTERRUPTED

    if config.algo == "diffusion":
        from rankrl.ranks.latent import train_diffusion_policy

        return EXIT_INTERRUPTED if train_diffusion_policy(config, calibration=calibration).get("interrupted") else 0
    from rankrl.ranks.train import train_policy

    return EXIT_INTERRUPTED if train_policy(config, calibration=calibration).interrupted else 0


def _policy_command(argv: Sequence[str], module: str, config_name: str, fn_name: str, prog: str) -> int:
    """Parse ``rankrl.ranks.<module>.<config_name>`` with tyro and run ``<fn_name>``; a policy file from another
    observation layout or an unusable budget is a clear message and exit status 2, not a traceback."""
    import importlib

    from rankrl.ranks.budgets import BudgetError
    from rankrl.ranks.policy import PolicyLayoutError

    mod = importlib.import_module(f"rankrl.ranks.{module}")
    config = parse_config(getattr(mod, config_name), argv, prog=prog)
    try:
        getattr(mod, fn_name)(config)
    except (PolicyLayoutError, BudgetError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_apply(argv: Sequence[str]) -> int:
    """``rankrl apply``: a trained rank policy -> PEFT adapter_config.json for any model (+ optional fine-tune)."""
    return _policy_command(argv, "apply", "ApplyConfig", "apply_policy", "rankrl apply")


def cmd_baselines(argv: Sequence[str]) -> int:
    """``rankrl baselines``: every rank baseline (and a policy) fine-tuned live at equal budget, one table."""
    return _policy_command(argv, "compare", "BaselinesConfig", "run_baselines", "rankrl baselines")


@dataclass(frozen=True)
class ConvertPolicyArgs:
    """Convert an old-format rank policy (SB3 policy.zip, and checkpoint.zip if present) to safetensors + JSON.

    The old files are pickles: reading them runs whatever code they hold. Convert only a file you trust (one you
    trained yourself); rankrl reads the converted policy without running anything."""

    policy: str
    """directory with the old policy.zip + policy.json (and optionally checkpoint.zip + checkpoint.json)"""
    trust: bool = False
    """required: you trust this file (converting unpickles it, which can run code)"""


def cmd_convert_policy(argv: Sequence[str]) -> int:
    """``rankrl convert-policy --policy DIR --trust``: one-time conversion of a trusted pickle-based policy."""
    from pathlib import Path

    from rankrl.ranks.policy import LEGACY_POLICY_FILE, PolicyLayoutError, convert_legacy_policy

    args = parse_config(ConvertPolicyArgs, list(argv), prog="rankrl convert-policy")
    folder = Path(args.policy)
    folder = folder.parent if folder.is_file() else folder  # a file inside it, or the folder (missing: an error)
    if not args.trust:
        print(f"rankrl convert-policy: converting {folder / LEGACY_POLICY_FILE} unpickles it, which runs any code it "
              "holds. Only if you trust where it came from (e.g. you trained it), pass --trust", file=sys.stderr)
        return 2
    try:
        written = [convert_legacy_policy(folder)]
    except PolicyLayoutError as e:
        print(f"rankrl convert-policy: {e}", file=sys.stderr)
        return 2
    from rankrl.ranks.train import LEGACY_CHECKPOINT_FILE, convert_legacy_checkpoint

    if (folder / LEGACY_CHECKPOINT_FILE).exists():
        written.append(convert_legacy_checkpoint(folder))
    print(f"converted -> {', '.join(str(p) for p in written)}; the old .zip files are no longer read (delete them "
          "once the converted policy works)")
    return 0


def cmd_collect_runs(argv: Sequence[str]) -> int:
    """``rankrl collect-runs``: live runs of allocation structures at several budgets -> one JSONL row each."""
    from rankrl.ranks.runs import CollectRunsConfig, collect_runs

    collect_runs(parse_config(CollectRunsConfig, list(argv), prog="rankrl collect-runs"))
    return 0

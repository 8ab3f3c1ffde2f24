"""The ``rankrl`` console script: one entry point, subcommands in a plain dict (like TRL's ``trl`` command).

Every subcommand parses its own dataclass with tyro, so ``rankrl <cmd> --help`` lists every field with its
docstring. Heavy libraries load only inside the subcommand that needs them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

from rankrl import __version__
from rankrl.trainers.finetune import FineTuneConfig


@dataclass(frozen=True)
class FinetuneArgs(FineTuneConfig):
    """Run a live LoRA fine-tune with per-module ranks; prints metrics and costs, exports a PEFT adapter."""

    out: str = "runs/finetune"
    """run directory: metrics.jsonl, checkpoint.pt, adapter/ (PEFT), curves.png, summary.json"""
    wandb: bool = True
    """log to W&B (offline unless WANDB_MODE / credentials say otherwise)"""
    resume: bool = False
    """continue from <out>/checkpoint.pt instead of starting anew"""
    progress: bool = True
    """show a progress bar"""


def cmd_finetune(argv: Sequence[str]) -> int:
    import tyro

    args = tyro.cli(FinetuneArgs, args=list(argv), prog="rankrl finetune")
    from rankrl.trainers.finetune_job import run_finetune

    config = FineTuneConfig(**{f.name: getattr(args, f.name) for f in fields(FineTuneConfig)})
    extra = {k: v for k, v in asdict(args).items() if k not in asdict(config)}
    return run_finetune(config, **extra)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "finetune": (cmd_finetune, "live LoRA fine-tune with per-module rank masks, metrics and costs"),
}


def _usage() -> str:
    lines = [f"rankrl {__version__}: RL that decides where fine-tuning capacity and compute go.", "",
             "usage: rankrl <command> [--help] [options]", "", "commands:"]  # fmt: skip
    lines += [f"  {name:<12} {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rankrl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return COMMANDS[name][0](rest)


if __name__ == "__main__":
    sys.exit(main())

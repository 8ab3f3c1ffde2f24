"""The ``rankrl`` console script: one entry point, subcommands in a plain dict (like TRL's ``trl`` command).

Each subcommand lives in its domain's ``commands`` module (``rankrl.ranks``, ``rankrl.rollouts``, ``rankrl.rerank``)
and is imported only when it runs, so ``rankrl --help`` is cheap. Every subcommand parses its own dataclass with tyro
(or TRL's parser for GRPO jobs), so ``rankrl <cmd> --help`` lists every field with its docstring.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from rankrl import __version__

#: command -> ("module:function", one-line help); the function takes the remaining argv and returns an exit status
COMMANDS: dict[str, tuple[str, str]] = {
    "finetune": ("rankrl.ranks.commands:cmd_finetune",
                 "live LoRA fine-tune with per-module rank masks, metrics and costs"),
    "train-policy": ("rankrl.ranks.commands:cmd_train_policy",
                     "train a LoRA rank policy (PPO) on the calibrated sim, evaluate it live"),
    "apply": ("rankrl.ranks.commands:cmd_apply",
              "apply a rank policy to any model -> PEFT adapter_config.json (+ --finetune)"),
    "baselines": ("rankrl.ranks.commands:cmd_baselines",
                  "uniform (lr-tuned), random, spectrum, importance, AdaLoRA, policy: equal budget"),
    "convert-policy": ("rankrl.ranks.commands:cmd_convert_policy",
                       "convert a trusted old pickle policy.zip (+ checkpoint.zip) to safetensors + JSON, once"),
    "collect-runs": ("rankrl.ranks.commands:cmd_collect_runs",
                     "live runs of rank allocation structures -> the learned surrogate's JSONL dataset"),
    "rollouts": ("rankrl.rollouts.commands:cmd_rollouts",
                 "GRPO with per-prompt rollout counts: uniform, Knapsack RL or a learned allocator"),
    "compress": ("rankrl.compress.commands:cmd_compress",
                 "factorize attention projections under a FLOP budget (rule or RL policy), measured speed-up"),
    "rerank": ("rankrl.rerank.commands:cmd_rerank",
               "GRPO rerankers (Rank-R1, ERank, GroupRank) on TRL: train and eval"),
}  # fmt: skip
#: old name -> new name; an alias runs the new command after a deprecation warning (kept one release)
ALIASES: dict[str, str] = {"budget": "rollouts"}


def command(name: str) -> Callable[[Sequence[str]], int]:
    """The function behind ``rankrl <name>`` (imports its domain now)."""
    module, _, fn = COMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module), fn)


def _usage() -> str:
    lines = [f"rankrl {__version__}: RL that decides where fine-tuning capacity and compute go.", "",
             "usage: rankrl <command> [--help] [options]", "", "commands:"]  # fmt: skip
    lines += [f"  {name:<13} {doc}" for name, (_, doc) in COMMANDS.items()]
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
    if name in ALIASES:
        print(f"rankrl: '{name}' is deprecated and will be removed in the next release; use 'rankrl {ALIASES[name]}'",
              file=sys.stderr)
        name = ALIASES[name]
    if name not in COMMANDS:
        print(f"rankrl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return command(name)(rest)


if __name__ == "__main__":
    sys.exit(main())

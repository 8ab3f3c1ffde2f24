"""Command-line parsing shared by every rankrl command (core: no domain imports).

One flag spelling everywhere, TRL's: underscores (``--output_dir``, ``--max_params``). rankrl's own configs parse
with tyro through :func:`parse_config` (which also accepts the dashed spelling); TRL jobs use ``TrlParser`` and
:func:`with_grpo_defaults` only prepends CPU-safe, observable defaults for flags the user did not pass, so every
GRPOConfig flag still works and the user's value always wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def parse_config(cls: type[T], argv: Sequence[str], prog: str) -> T:
    """Parse ``argv`` into the dataclass ``cls`` with tyro, flags spelt with underscores like TRL's."""
    import tyro

    return tyro.cli(cls, args=list(argv), prog=prog, use_underscores=True)

#: defaults every rankrl GRPO command starts from (a command adds its own on top, see ``with_grpo_defaults``)
GRPO_DEFAULTS: dict[str, str] = {
    "--report_to": "wandb", "--logging_steps": "1", "--max_completion_length": "32",
    "--per_device_train_batch_size": "16", "--max_steps": "20", "--learning_rate": "1e-4", "--save_strategy": "no",
    "--temperature": "1.0",
}  # fmt: skip
#: added when no CUDA device is present: TRL's bf16 default fails on CPU
CPU_DEFAULTS: dict[str, str] = {"--use_cpu": "true", "--bf16": "false", "--gradient_checkpointing": "false"}


def with_defaults(argv: list[str], defaults: Mapping[str, str]) -> list[str]:
    """``argv`` with ``defaults`` prepended for every flag it does not already pass (``--flag v`` or ``--flag=v``).

    >>> with_defaults(["--max_steps", "5"], {"--max_steps": "20", "--seed": "1"})
    ['--seed', '1', '--max_steps', '5']
    """
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    extra: list[str] = []
    for flag, value in defaults.items():
        if flag not in given:
            extra += [flag, value]
    return extra + list(argv)


def with_grpo_defaults(argv: list[str], command_defaults: Mapping[str, str]) -> list[str]:
    """``argv`` with a command's own defaults, then the shared GRPO ones (and CPU ones without CUDA), filled in."""
    import torch

    defaults = dict(GRPO_DEFAULTS) | dict(command_defaults)
    if not torch.cuda.is_available():
        defaults |= CPU_DEFAULTS
    return with_defaults(argv, defaults)

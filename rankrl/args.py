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


#: TrainingArguments / GRPOConfig flags that need a CUDA GPU -> what to do instead on a CPU-only machine
GPU_ONLY_FLAGS: dict[str, str] = {
    "--fp16": "drop --fp16 (CPU runs in fp32; --bf16 true also works on CPU)",
    "--tf32": "drop --tf32 (TF32 is a feature of NVIDIA Ampere+ GPUs)",
    "--use_vllm": "drop --use_vllm (vLLM generation needs a GPU)",
}


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value ``argv`` gives ``flag`` (``--flag v``, ``--flag=v``, or a bare ``--flag`` = "true"); None if absent.

    >>> flag_value(["--fp16", "--max_steps", "3"], "--fp16"), flag_value(["--fp16=false"], "--fp16")
    ('true', 'false')
    """
    value = None
    for i, a in enumerate(argv):
        if a == flag:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            value = nxt if nxt is not None and not nxt.startswith("--") else "true"
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def passed(argv: list[str], flag: str) -> bool:
    """Whether ``argv`` gives ``flag`` (``--flag``, ``--flag v`` or ``--flag=v``)."""
    return flag_value(argv, flag) is not None


def refuse_gpu_only_flags(argv: list[str], cuda: bool) -> None:
    """Without a CUDA device, a flag that needs one is an error naming the fix (TRL would run on regardless, silently
    ignoring or mis-applying it)."""
    if cuda:
        return
    bad = [f"{flag} {value}: {fix}" for flag, fix in GPU_ONLY_FLAGS.items()
           if (value := flag_value(argv, flag)) is not None and value.lower() not in ("false", "0", "no")]  # fmt: skip
    if bad:
        raise SystemExit("no CUDA GPU on this machine, so these flags cannot apply: " + "; ".join(bad))


def with_grpo_defaults(argv: list[str], command_defaults: Mapping[str, str]) -> list[str]:
    """``argv`` with a command's own defaults, then the shared GRPO ones (and CPU ones without CUDA), filled in.
    GPU-only flags on a machine without CUDA are refused (:func:`refuse_gpu_only_flags`)."""
    import torch

    cuda = torch.cuda.is_available()
    refuse_gpu_only_flags(argv, cuda)
    defaults = dict(GRPO_DEFAULTS) | dict(command_defaults)
    if not cuda:
        defaults |= CPU_DEFAULTS
    return with_defaults(argv, defaults)

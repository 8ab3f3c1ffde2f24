"""Verifiable reward functions for GRPO on the ``arith`` task and GSM8K, in TRL's shape.

Each reward is a plain function ``(completions, **kwargs) -> list[float]``: TRL passes every dataset column
(here ``target``) as a keyword list aligned with ``completions``, plus ``prompts``, ``completion_ids`` and a few
trainer hooks, which are ignored. Completions are plain strings or, for conversational datasets, lists of message
dicts (``[{"role": "assistant", "content": "..."}]``).

A number is matched by its value, not its spelling: commas are thousands separators (``"1,234"``), a trailing
``.0`` does not matter (``"19.0" == "19"``), and a GSM8K-style ``#### 72`` marker, when present, names the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["completion_text", "extract_number", "numeric_answer_reward", "same_number"]

# A signed integer or decimal, optionally with thousands commas: "-12", "1,234.5", ".5" is not matched (GSM8K and
# arith answers never start with a bare point, and "3.5." ends a sentence rather than a number).
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
# GSM8K's reference format ends the solution with "#### <answer>"; models trained on it repeat the marker.
_MARKED = re.compile(r"####\s*([-+]?\$?\s*\d[\d,]*(?:\.\d+)?)")


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The text of one completion: the string itself, or the last message's content for a conversation.

    Example:
        >>> completion_text([{"role": "assistant", "content": "It is 7."}])
        'It is 7.'
        >>> completion_text("19")
        '19'
    """
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    content = completion[-1].get("content", "")
    if isinstance(content, str):
        return content
    # multimodal content blocks: keep the text parts
    return " ".join(part.get("text", "") for part in content if isinstance(part, dict))


def extract_number(text: str) -> str | None:
    """The answer number of ``text``: after a ``####`` marker if there is one, else the last number.

    Returns the number as written, minus commas, ``$`` and spaces, or None when the text holds no number.

    Example:
        >>> extract_number("17+87=104")
        '104'
        >>> extract_number("so the total is $1,234.")
        '1234'
        >>> extract_number("48/2 = 24 ... #### 72 (checked 3 times)")
        '72'
        >>> extract_number("no digits") is None
        True
    """
    marked = _MARKED.findall(text)
    if marked:
        return re.sub(r"[,$\s]", "", marked[-1])
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def same_number(a: str | float | int | None, b: str | float | int | None) -> bool:
    """Whether two numbers are equal by value (commas ignored, ``"19.0" == "19"``); False if either is missing.

    Example:
        >>> same_number("19.0", "19"), same_number("1,000", 1000), same_number("-3", "3"), same_number(None, "3")
        (True, True, False, False)
    """
    if a is None or b is None:
        return False
    try:
        return Decimal(str(a).replace(",", "").strip()) == Decimal(str(b).replace(",", "").strip())
    except InvalidOperation:
        return False


def numeric_answer_reward(
    completions: Sequence[str | Sequence[dict[str, Any]]], target: Sequence[str | float | int], **kwargs: Any
) -> list[float]:
    """1.0 where the completion's answer number (see :func:`extract_number`) equals ``target``, else 0.0.

    Works for the ``arith`` task (targets like ``"104"``) and GSM8K (targets are the final number, e.g.
    ``"72"`` or ``"1,234"``). Use it as ``GRPOTrainer(reward_funcs=numeric_answer_reward, ...)`` on a dataset with
    ``prompt`` and ``target`` columns.

    Args:
        completions: One completion per row: a string or a list of message dicts.
        target: The expected number per row (TRL passes the dataset's ``target`` column).
        **kwargs: Other columns and trainer hooks, ignored.

    Returns:
        One reward in {0.0, 1.0} per completion.

    Example:
        >>> numeric_answer_reward(["104", " = 104.0", "105", [{"role": "assistant", "content": "#### 104"}]],
        ...                       target=["104"] * 4)
        [1.0, 1.0, 0.0, 1.0]
    """
    if len(completions) != len(target):
        raise ValueError(
            f"got {len(completions)} completions but {len(target)} targets; the dataset needs a 'target' column "
            "with one expected answer per prompt"
        )
    return [
        1.0 if same_number(extract_number(completion_text(c)), t) else 0.0
        for c, t in zip(completions, target, strict=True)
    ]

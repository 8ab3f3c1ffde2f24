"""`rankrl budget`: GRPO with allocators from the command line, and the learned allocator inside the trainer."""

from __future__ import annotations

import numpy as np
import pytest

from rankrl.cli import main
from rankrl.tracking import read_metrics


def test_budget_help(capsys):
    assert main(["budget", "--help"]) == 0
    assert "train-allocator" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["budget", "train", "--help"])
    assert exc.value.code == 0
    assert "--allocator" in capsys.readouterr().out and main(["budget", "nope"]) == 2


@pytest.mark.parametrize("allocator", ["uniform", "knapsack"])
def test_budget_train_logs_grpo_metrics(tmp_path, allocator):
    out = tmp_path / "run"
    assert main(["budget", "train", "--model", "tiny-qwen", "--task", "arith", "--allocator", allocator,
                 "--rollouts_per_prompt", "4", "--per_device_train_batch_size", "8", "--max_steps", "2",
                 "--max_completion_length", "4", "--max_prompts", "4", "--lora_r", "4", "--report_to", "none",
                 "--output_dir", str(out)]) == 0  # fmt: skip
    rows = [r for r in read_metrics(out) if "grpo/effective_rollout_ratio" in r]
    assert len(rows) == 2
    assert all(0 <= r["grpo/frac_nonzero_groups"] <= 1 for r in rows)
    assert (out / "adapter_config.json").exists()  # LoRA adapter saved by TRL


def test_bad_budget_args_are_clear():
    with pytest.raises(ValueError, match="n_min"):
        main(["budget", "train", "--n_min", "9", "--report_to", "none"])
    with pytest.raises(FileNotFoundError, match="trained allocator directory"):
        main(["budget", "train", "--allocator", "/nonexistent", "--report_to", "none"])


def test_learned_allocator_drives_the_trainer_callable(tmp_path):
    from rankrl.rollouts.allocator import trainer_allocator
    from rankrl.rollouts.grpo import RolloutHistory

    assert main(["budget", "train-allocator", "--out", str(tmp_path / "alloc"), "--timesteps", "128",
                 "--difficulty", "mixed", "--history_rounds", "1", "--prompts_per_round", "4"]) == 0  # fmt: skip
    alloc = trainer_allocator(tmp_path / "alloc", horizon=10)
    history = RolloutHistory()
    counts = alloc(["a", "b", "c", "d"], history, 32)
    assert sum(counts) == 32 and min(counts) >= 2
    history.update(["a"] * 8 + ["b"] * 8, [1] * 8 + [0, 1] * 4)
    alloc(["a", "b", "c", "d"], history, 32)
    h = alloc.history
    assert h.trials[alloc.ids["a"]] == 8 and h.successes[alloc.ids["b"]] == 4  # trainer history folded in once
    alloc(["a", "b"], history, 16)
    assert h.trials[alloc.ids["a"]] == 8  # nothing new: not counted twice
    assert np.isclose(h.last_frac[alloc.ids["b"]], 0.5)

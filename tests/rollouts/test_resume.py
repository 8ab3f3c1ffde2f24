"""`rankrl rollouts train`: a resume continues the run (TRL state, rollout history, metrics without repeated steps),
refuses changed flags, SIGINT saves a checkpoint and exits 130, and --num_generations is never silently replaced."""

from __future__ import annotations

import json
import signal

import pytest

pytest.importorskip("trl")

from rankrl.cli import main  # noqa: E402
from rankrl.interrupt import EXIT_INTERRUPTED  # noqa: E402
from rankrl.rollouts.job import HISTORY_FILE  # noqa: E402
from tests.trl_signals import loss_steps, signal_after_first_step  # noqa: E402


def _argv(out, *extra):
    return ["rollouts", "train", "--model", "tiny-qwen", "--task", "arith", "--allocator", "knapsack",
            "--rollouts_per_prompt", "4", "--per_device_train_batch_size", "8", "--max_completion_length", "4",
            "--max_prompts", "4", "--lora_r", "4", "--report_to", "none", "--logging_steps", "1",
            "--output_dir", str(out), *extra]  # fmt: skip



def _history(checkpoint):
    return json.loads((checkpoint / HISTORY_FILE).read_text())


def test_resume_continues_history_and_metrics_and_refuses_changed_flags(tmp_path):
    out = tmp_path / "run"
    save = ["--save_strategy", "steps", "--save_steps", "1"]
    assert main(_argv(out, "--max_steps", "3", *save)) == 0
    full = _history(out / "checkpoint-3")
    assert _history(out / "checkpoint-1")["step"] == 1
    trials = sum(full["history"]["trials"])
    assert trials == 3 * 8 and sum(_history(out / "checkpoint-1")["history"]["trials"]) == 8

    assert main(_argv(out, "--max_steps", "3", *save, "--resume_from_checkpoint", str(out / "checkpoint-1"))) == 0
    assert loss_steps(out) == [1, 2, 3]  # rows after step 1 were cut, then logged once by the resumed run
    resumed = _history(out / "checkpoint-3")
    # the restored history (8 trials) + 2 new rounds; an ignored checkpoint or a lost history gives 16 or 24+
    assert sum(resumed["history"]["trials"]) == trials
    assert resumed["step"] == 3

    with pytest.raises(ValueError, match="flags that change the run") as exc:
        main(_argv(out, "--max_steps", "3", "--learning_rate", "0.5", "--n_max", "8", "--resume_from_checkpoint",
                   "true"))  # fmt: skip
    assert "--n_max 64 -> 8" in str(exc.value) and "--learning_rate 0.0001 -> 0.5" in str(exc.value)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main(_argv(tmp_path / "empty", "--resume_from_checkpoint", "true"))
    (out / "checkpoint-2" / HISTORY_FILE).unlink()  # e.g. a checkpoint from plain TRL: the history cannot come back
    with pytest.raises(FileNotFoundError, match=f"no {HISTORY_FILE}"):
        main(_argv(out, "--max_steps", "3", "--resume_from_checkpoint", str(out / "checkpoint-2")))


def test_num_generations_is_not_silently_replaced():
    with pytest.raises(ValueError, match="pass --rollouts_per_prompt 4"):
        main(["rollouts", "train", "--num_generations", "4", "--rollouts_per_prompt", "8", "--report_to", "none"])
    with pytest.raises(ValueError, match="--rollouts_per_prompt"):
        main(["rollouts", "train", "--num_generations=8", "--report_to", "none"] + ["--rollouts_per_prompt", "2"])


def test_sigint_saves_a_checkpoint_exits_130_and_resumes(tmp_path):
    out = tmp_path / "run"
    returncode, log = signal_after_first_step([*_argv(out, "--max_steps", "500")], out, signal.SIGINT)
    assert returncode == EXIT_INTERRUPTED, log[-3000:]
    assert "SIGINT" in log and "--resume_from_checkpoint" in log
    (checkpoint,) = out.glob("checkpoint-*")
    step = int(checkpoint.name.split("-")[1])
    assert 1 <= step < 500 and _history(checkpoint)["step"] == step
    assert not (out / "adapter_config.json").exists()  # the final save did not run

    assert main(_argv(out, "--max_steps", str(step + 1), "--resume_from_checkpoint", "true")) == 0
    assert loss_steps(out) == list(range(1, step + 2))


def test_commands_doctests():
    import doctest

    import rankrl.args

    assert doctest.testmod(rankrl.args).attempted >= 2
    assert doctest.testmod(rankrl.args).failed == 0

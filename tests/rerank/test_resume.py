"""`rankrl rerank train`: a resume continues the run (metrics without repeated steps) and refuses changed flags,
SIGTERM saves a checkpoint and exits 130, and --num_generations is never silently replaced by --rollouts."""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("trl")

from rankrl.cli import main  # noqa: E402
from rankrl.interrupt import EXIT_INTERRUPTED  # noqa: E402
from tests.rerank.tiny import tiny_collection, write_trec  # noqa: E402
from tests.trl_signals import loss_steps, signal_after_first_step  # noqa: E402


def _argv(data, out, *extra, window=3):
    return ["rerank", "train", "--recipe", "rank-r1", "--model", "tiny-qwen", "--data", str(data), "--rollouts", "2",
            "--window", str(window), "--lora_r", "2", "--max_doc_chars", "40", "--per_device_train_batch_size", "4",
            "--max_completion_length", "4", "--log_completions", "false", "--report_to", "none",
            "--logging_steps", "1", "--output_dir", str(out), *extra]  # fmt: skip



def test_rerank_resume_continues_metrics_and_refuses_changed_flags(tmp_path):
    data = write_trec(tiny_collection(), tmp_path / "coll")
    out = tmp_path / "run"
    save = ["--save_strategy", "steps", "--save_steps", "1"]
    assert main(_argv(data, out, "--max_steps", "3", *save)) == 0
    assert loss_steps(out) == [1, 2, 3]
    (out / "merged" / "rerank.json").unlink()
    assert main(_argv(data, out, "--max_steps", "3", *save, "--resume_from_checkpoint", str(out / "checkpoint-1"))) == 0
    assert loss_steps(out) == [1, 2, 3]  # cut back to step 1, then steps 2 and 3 once (an ignored resume: 1,1,2,3)
    assert (out / "merged" / "rerank.json").is_file()
    with pytest.raises(ValueError, match="--window 3 -> 4"):
        main(_argv(data, out, "--max_steps", "3", "--resume_from_checkpoint", "true", window=4))


def test_rerank_num_generations_is_not_silently_replaced():
    with pytest.raises(ValueError, match="pass --rollouts 4"):
        main(["rerank", "train", "--num_generations", "4", "--rollouts", "8", "--report_to", "none"])


def test_rerank_sigterm_saves_a_checkpoint_and_exits_130(tmp_path):
    data = write_trec(tiny_collection(), tmp_path / "coll")
    out = tmp_path / "run"
    returncode, log = signal_after_first_step([*_argv(data, out, "--max_steps", "500")], out, signal.SIGTERM)
    assert returncode == EXIT_INTERRUPTED, log[-3000:]
    (checkpoint,) = out.glob("checkpoint-*")
    assert "SIGTERM" in log and checkpoint.name in log
    assert not (out / "merged").exists()  # stopped: no final merge
    step = int(checkpoint.name.split("-")[1])
    assert main(_argv(data, out, "--max_steps", str(step + 1), "--resume_from_checkpoint", "true")) == 0
    assert loss_steps(out) == list(range(1, step + 2))

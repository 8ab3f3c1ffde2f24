"""Remote fine-tuning with a per-round deadline (LoRARankEnv ``deadline_s``): an update whose (faded) transmit time
exceeds it is lost, so the server's copy keeps the round's starting weights; on both backends. A deadline nothing
misses changes nothing, channel draws included."""

from __future__ import annotations

import math

import pytest
import torch

from rankrl.args import parse_config
from rankrl.ranks.env import LoRARankConfig, LoRARankEnv
from rankrl.ranks.episodes import episode_summary, rollout_episode, uniform_allocator
from rankrl.ranks.sim import SimCalibration
from rankrl.ranks.train import TrainPolicyConfig
from rankrl.tracking import Tracker, read_metrics

TINY_RUN = dict(model="tiny-bert", task="default", r_max=8, batch_size=8, max_eval=32, max_train=256, lr=3e-3,
                threads=1, steps=6)  # fmt: skip
CHANNEL = dict(decisions=3, budget_rank=2.0, snr_range_db=(0.0, 10.0))


def _episode(env: LoRARankEnv, seed: int = 0) -> tuple[dict, list[dict]]:
    """(reset info, step infos) of one uniform-LoRA episode (every round sends a non-empty update)."""
    first = env.reset(seed=seed)[1]
    infos = rollout_episode(env, uniform_allocator, seed)
    return first, infos


def _trainable(env: LoRARankEnv) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in env.run.model.named_parameters() if p.requires_grad}


def test_a_live_update_that_misses_the_deadline_is_not_applied(tmp_path):
    tracker = Tracker(tmp_path, use_wandb=False)
    env = LoRARankEnv("live", tracker=tracker, **TINY_RUN, **CHANNEL, deadline_s=1e-12, w_lost=0.5)
    first = env.reset(seed=0)[1]
    start = _trainable(env)
    infos = rollout_episode(env, uniform_allocator, 0)
    tracker.finish()
    assert all(i["cost/bits"] > 0 and i["cost/tx_seconds"] > 1e-12 for i in infos)
    assert [i["tx/lost"] for i in infos] == [1.0, 1.0, 1.0] and infos[-1]["tx/lost_rounds"] == 3
    assert all(i["tx/deadline_s"] == 1e-12 and i["reward/lost"] == -0.5 for i in infos)
    assert all(i["reward/total"] == pytest.approx(sum(v for k, v in i.items() if k.startswith("reward/") and
                                                      k != "reward/total")) for i in infos)  # fmt: skip
    # every round trained (schedule and step count moved on) but the server kept the starting weights
    assert env.run.state.step == 6 and infos[-1]["train/lr"] == 0.0
    after = _trainable(env)
    assert after.keys() == start.keys() and all(torch.equal(after[k], start[k]) for k in start)
    assert infos[-1]["quality/eval_loss"] == pytest.approx(first["quality/eval_loss"], rel=1e-6)
    assert episode_summary(infos)["lost_rounds"] == 3.0
    rows = read_metrics(tmp_path)
    assert [r["tx/lost"] for r in rows if "tx/lost" in r] == [1.0, 1.0, 1.0]
    assert rows[-1]["tx/lost_rounds"] == 3


def test_without_a_deadline_or_with_one_nothing_misses_the_live_run_learns_the_same():
    free_first, free = _episode(LoRARankEnv("live", **TINY_RUN, **CHANNEL))
    assert abs(free[-1]["quality/eval_loss"] - free_first["quality/eval_loss"]) > 1e-3  # the updates arrived
    assert all(i["tx/lost"] == 0.0 and "tx/deadline_s" not in i for i in free)
    assert free[-1]["tx/lost_rounds"] == 0
    _, loose = _episode(LoRARankEnv("live", **TINY_RUN, **CHANNEL, deadline_s=1e9, w_lost=0.5))
    assert [i["tx/lost"] for i in loose] == [0.0, 0.0, 0.0] and loose[-1]["tx/lost_rounds"] == 0
    for a, b in zip(free, loose, strict=True):  # same channel draws, same training, same reward
        assert b["cost/tx_seconds"] == a["cost/tx_seconds"] and b["reward/total"] == a["reward/total"]
        assert b["quality/eval_loss"] == a["quality/eval_loss"] and b["reward/lost"] == 0.0


def test_the_sim_backend_loses_updates_the_same_way():
    def env(**kw):
        return LoRARankEnv("sim", calibration=SimCalibration.synthetic(r_max=8), r_max=8, steps=40, decisions=4,
                           budget_rank=2.0, **kw)  # fmt: skip

    first, lost = _episode(env(deadline_s=1e-12))
    assert [i["tx/lost"] for i in lost] == [1.0] * 4 and lost[-1]["tx/lost_rounds"] == 4
    assert lost[-1]["quality/eval_loss"] == pytest.approx(first["quality/eval_loss"], rel=1e-9)
    free_first, free = _episode(env())
    assert free[-1]["quality/eval_loss"] < free_first["quality/eval_loss"] - 1e-3
    _, loose = _episode(env(deadline_s=1e9))
    assert [i["reward/total"] for i in loose] == [i["reward/total"] for i in free]
    # a deadline between the rounds' transmit times loses exactly the slower rounds
    mid = sorted(i["cost/tx_seconds"] for i in free)[1:3]
    _, some = _episode(env(deadline_s=float(sum(mid) / 2)))
    assert [i["tx/lost"] for i in some] == [float(i["cost/tx_seconds"] > sum(mid) / 2) for i in free]
    assert some[-1]["tx/lost_rounds"] == 2


def test_deadline_flags_parse_and_are_checked():
    config = parse_config(TrainPolicyConfig, ["--env.deadline_s", "0.25", "--env.w_lost", "0.3"], prog="x")
    assert config.env.deadline_s == 0.25 and config.env.w_lost == 0.3
    assert parse_config(TrainPolicyConfig, [], prog="x").env.deadline_s is None
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="deadline_s must be"):
            LoRARankConfig(deadline_s=bad)
    with pytest.raises(ValueError, match="w_lost"):
        LoRARankConfig(w_lost=-1.0)

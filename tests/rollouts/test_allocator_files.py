"""Learned allocator files: safetensors + JSON round trip, old pickled model.zip refused without running it, the
one-time ``convert-allocator --trust``, and the trainer adapter's checkpoint state."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile

import numpy as np
import pytest

from rankrl.cli import main
from rankrl.rollouts.allocator import (
    POLICY_FILE,
    WEIGHTS_FILE,
    Allocator,
    TrainerAllocator,
    load_allocator,
    save_allocator,
    trainer_allocator,
)
from rankrl.rollouts.env import RolloutBudgetEnv
from rankrl.rollouts.history import RolloutHistory

ENV = dict(prompts_per_round=4, rollouts_per_prompt=4, n_max=8)


class _Touch:
    """Unpickling this calls ``open(path, "w")``: a stand-in for any code a pickle can run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _ppo(**policy_kwargs):
    from stable_baselines3 import PPO

    from rankrl.set_policy import SetActorCriticPolicy

    return PPO(SetActorCriticPolicy, RolloutBudgetEnv(**ENV), device="cpu", seed=0, n_steps=16, batch_size=16,
               policy_kwargs=dict({"log_std_init": -1.0}, **policy_kwargs))  # fmt: skip


def _crafted_old_allocator(directory, marker):
    """An old-format allocator dir whose model.zip ``data`` entry runs ``_Touch(marker)`` when SB3 unpickles it."""
    directory.mkdir(parents=True)
    payload = base64.b64encode(pickle.dumps(_Touch(marker))).decode()
    data = {"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": payload}}
    with zipfile.ZipFile(directory / "model.zip", "w") as z:
        z.writestr("data", json.dumps(data))
        z.writestr("_stable_baselines3_version", "2.0.0")
    (directory / "env_config.json").write_text(json.dumps(ENV))
    return directory


def test_crafted_pickle_is_refused_and_never_runs(tmp_path):
    live = tmp_path / "proof"
    with zipfile.ZipFile(_crafted_old_allocator(tmp_path / "probe", live) / "model.zip") as z:
        payload = json.loads(z.read("data"))["policy_class"][":serialized:"]
    pickle.loads(base64.b64decode(payload))
    assert live.exists()  # the payload is live: unpickling it does create its file

    marker = tmp_path / "pwned"
    old = _crafted_old_allocator(tmp_path / "old", marker)
    for load in (load_allocator, trainer_allocator):
        with pytest.raises(ValueError, match=r"old-format allocator.*convert-allocator --allocator .* --trust"):
            load(old)
    with pytest.raises(ValueError, match="convert-allocator"):
        main(["rollouts", "train", "--allocator", str(old), "--report_to", "none"])
    assert main(["rollouts", "convert-allocator", "--allocator", str(old)]) == 2  # no --trust: refused
    assert not marker.exists()
    assert not (old / WEIGHTS_FILE).exists()


def test_saved_allocator_is_safetensors_and_json_and_acts_the_same(tmp_path):
    model = _ppo(context="attention", hidden=16, net_arch=dict(pi=[8], vf=[8]))
    out = save_allocator(model, tmp_path / "alloc", ENV)
    assert sorted(p.name for p in out.iterdir()) == ["env_config.json", POLICY_FILE, WEIGHTS_FILE]
    spec = json.loads((out / POLICY_FILE).read_text())
    assert spec["network"]["kwargs"]["context"] == "attention" and spec["hyperparameters"]["n_steps"] == 16
    loaded = load_allocator(out)
    env = RolloutBudgetEnv(**ENV)
    obs, _ = env.reset(seed=1)
    np.testing.assert_allclose(loaded.scores(obs), Allocator(model, env.config).scores(obs), atol=1e-6)
    assert loaded.config == env.config


def test_convert_allocator_with_trust_rewrites_a_trusted_old_file(tmp_path):
    model = _ppo()
    old = tmp_path / "old"
    model.save(old / "model.zip")  # the old format: SB3's pickled zip
    (old / "env_config.json").write_text(json.dumps(ENV))
    with pytest.raises(ValueError, match="--trust"):
        load_allocator(old)
    assert main(["rollouts", "convert-allocator", "--allocator", str(old), "--trust"]) == 0
    env = RolloutBudgetEnv(**ENV)
    obs, _ = env.reset(seed=2)
    np.testing.assert_allclose(load_allocator(old).scores(obs), Allocator(model, env.config).scores(obs), atol=1e-6)


def test_trainer_allocator_state_round_trip(tmp_path):
    alloc = TrainerAllocator(load_allocator(save_allocator(_ppo(), tmp_path / "a", ENV)), horizon=5)
    history = RolloutHistory()
    alloc(["a", "b"], history, 8)
    history.update(["a"] * 4 + ["b"] * 4, [1, 0, 1, 1, 0, 0, 0, 1])
    alloc(["a", "b"], history, 8)
    state = json.loads(json.dumps(alloc.state_dict()))
    again = TrainerAllocator(alloc.allocator, horizon=5)
    again.load_state_dict(state)
    assert again.round == alloc.round == 2 and again.seen == alloc.seen == {"a": 4, "b": 4}
    np.testing.assert_array_equal(again.history.trials, alloc.history.trials)
    assert list(again(["a", "b"], history, 8)) == list(alloc(["a", "b"], history, 8))


def test_a_policy_json_naming_other_code_is_refused(tmp_path):
    from rankrl.set_policy import PolicySpecError

    out = save_allocator(_ppo(), tmp_path / "alloc", ENV)
    meta = json.loads((out / POLICY_FILE).read_text())
    meta["network"]["kwargs"]["activation_fn"] = "os.system"
    (out / POLICY_FILE).write_text(json.dumps(meta))
    with pytest.raises(PolicySpecError, match="os.system"):
        load_allocator(out)
    (out / POLICY_FILE).write_text(json.dumps({"weights": WEIGHTS_FILE}))
    with pytest.raises(ValueError, match="no 'network' record"):
        trainer_allocator(out)

"""Rank policy files run no code when loaded: safetensors weights + JSON network, an old pickle-based policy.zip is
refused without being unpickled, and `rankrl convert-policy --trust` converts a trusted one once."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from dataclasses import asdict

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stable_baselines3 import PPO
from stable_baselines3.common.save_util import json_to_data

from rankrl.cli import main
from rankrl.ranks.commands import cmd_convert_policy
from rankrl.ranks.env import LoRARankConfig, LoRARankEnv
from rankrl.ranks.finetune import FineTuneConfig
from rankrl.ranks.policy import (
    LEGACY_POLICY_FILE,
    POLICY_FILE,
    POLICY_META,
    PolicyLayoutError,
    UnsafePolicyFileError,
    load_policy,
    policy_meta,
    save_json,
    save_policy,
)
from rankrl.ranks.sim import SimCalibration
from rankrl.ranks.train import TrainPolicyConfig
from rankrl.set_policy import SetActorCriticPolicy

CONFIG = TrainPolicyConfig(env=LoRARankConfig(run=FineTuneConfig(model="tiny-bert", steps=8), decisions=2,
                                              max_modules=12), hidden=16)  # fmt: skip


class _TouchOnUnpickle:
    """Unpickling this calls ``open(path, "w")``: the file appears iff someone unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _ppo() -> PPO:
    env = LoRARankEnv("sim", config=CONFIG.env, calibration=SimCalibration.synthetic(r_max=8, run_steps=8))
    return PPO(SetActorCriticPolicy, env, n_steps=8, batch_size=8, device="cpu", seed=0,
               policy_kwargs=dict(hidden=16, log_std_init=-1.0))  # fmt: skip


def _obs(policy, seed=0):
    rng = np.random.default_rng(seed)
    space = policy.observation_space
    return {"rows": rng.uniform(0, 2, space["rows"].shape).astype(np.float32),
            "mask": np.ones(space["mask"].shape, np.float32),
            "globals": rng.uniform(0, 1, space["globals"].shape).astype(np.float32)}  # fmt: skip


def test_policy_files_are_safetensors_and_json_and_load_to_the_same_actions(tmp_path):
    model = _ppo()
    save_policy(model, tmp_path, CONFIG, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [POLICY_META, POLICY_FILE]  # no zip, no pickle
    meta = json.loads((tmp_path / POLICY_META).read_text())
    assert meta["network"]["kwargs"]["hidden"] == 16 and meta["weights"] == POLICY_FILE
    loaded = load_policy(tmp_path).policy
    assert load_policy(tmp_path / POLICY_FILE).meta == meta  # either file names the folder ...
    with pytest.raises(PolicyLayoutError, match="expected"):  # ... a typo does not silently mean its parent
        load_policy(tmp_path / "polcy")
    obs = _obs(model.policy)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0],
                                  model.policy.predict(obs, deterministic=True)[0])  # fmt: skip


def test_a_crafted_pickle_policy_is_refused_and_never_unpickled(tmp_path, capsys):
    folder, marker = tmp_path / "evil", tmp_path / "ran-code.txt"
    folder.mkdir()
    evil = base64.b64encode(pickle.dumps(_TouchOnUnpickle(str(marker)))).decode()
    data = json.dumps({"lr_schedule": {":type:": "<class 'function'>", ":serialized:": evil}})
    with zipfile.ZipFile(folder / LEGACY_POLICY_FILE, "w") as z:
        z.writestr("data", data)
    save_json(policy_meta(CONFIG, 0), folder / POLICY_META)

    with pytest.raises(UnsafePolicyFileError, match=rf"convert-policy --policy {folder} --trust"):
        load_policy(folder)
    assert main(["apply", "--policy", str(folder), "--model", "tiny-bert", "--out", str(tmp_path / "out")]) == 2
    assert "old policy format" in capsys.readouterr().err
    assert cmd_convert_policy(["--policy", str(folder)]) == 2  # no --trust: refused, nothing read
    assert "--trust" in capsys.readouterr().err
    assert not marker.exists()  # nothing of the file ran
    json_to_data(data)  # what PPO.load would do with that entry ...
    assert marker.exists()  # ... runs the payload: the refusal above is what kept it from running


def test_convert_policy_turns_a_trusted_old_zip_into_safetensors(tmp_path, capsys):
    model = _ppo()
    model.save(tmp_path / LEGACY_POLICY_FILE)  # the old format: SB3's zip, policy and checkpoint alike
    save_json(policy_meta(CONFIG, 8), tmp_path / POLICY_META)
    model.save(tmp_path / "checkpoint.zip")
    save_json({"timesteps_done": 8, "timesteps": 64, "config": asdict(CONFIG)}, tmp_path / "checkpoint.json")
    with pytest.raises(UnsafePolicyFileError):
        load_policy(tmp_path)
    assert cmd_convert_policy(["--policy", str(tmp_path), "--trust"]) == 0
    assert "converted" in capsys.readouterr().out
    loaded = load_policy(tmp_path)
    assert loaded.meta["timesteps"] == 8 and (tmp_path / POLICY_FILE).exists()
    obs = _obs(model.policy, seed=1)
    np.testing.assert_array_equal(loaded.policy.predict(obs, deterministic=True)[0],
                                  model.policy.predict(obs, deterministic=True)[0])  # fmt: skip
    state = json.loads((tmp_path / "checkpoint.json").read_text())  # --resume can continue it, pickle-free
    assert state["timesteps_done"] == 8 and state["format"] == "rankrl/ranks/train-policy-checkpoint"
    weights = load_file(str(tmp_path / "checkpoint.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in model.policy.state_dict().items())
    assert torch.load(tmp_path / "checkpoint_optimizer.pt", weights_only=True)["param_groups"]
    assert cmd_convert_policy(["--policy", str(tmp_path / "missing"), "--trust"]) == 2  # nothing there: a message

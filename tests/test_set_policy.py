"""Set policy (shared per-row weights, masked rows) and the learned rollout allocator built on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from rankrl.rollouts.allocator import Allocator, load_allocator, save_allocator, train_allocator
from rankrl.rollouts.env import RolloutBudgetEnv
from rankrl.rollouts.history import RolloutHistory
from rankrl.set_policy import SetActorCriticPolicy

ROWS, FEATS, GLOBS = 8, 5, 3


def _policy(n_global: int = 0, **kwargs) -> SetActorCriticPolicy:
    th.manual_seed(0)
    obs_space = spaces.Dict(
        {
            "rows": spaces.Box(-np.inf, np.inf, (ROWS, FEATS), dtype=np.float32),
            "mask": spaces.Box(0, 1, (ROWS,), dtype=np.float32),
            "globals": spaces.Box(-np.inf, np.inf, (GLOBS,), dtype=np.float32),
        }
    )
    action_space = spaces.Box(-1, 1, (ROWS + n_global,), np.float32)
    policy = SetActorCriticPolicy(obs_space, action_space, lambda _: 1e-3, **kwargs)
    with th.no_grad():  # SB3 initialises the head near 0; scale it up so the checks are not trivially met
        policy.action_net.linear.weight.mul_(100.0)
        if n_global:
            policy.action_net.global_linear.weight.mul_(100.0)
    return policy.eval()


def _obs(n_real: int, seed: int = 0, pad_value: float = 0.0) -> dict[str, th.Tensor]:
    g = th.Generator().manual_seed(seed)
    rows = th.randn(2, ROWS, FEATS, generator=g)
    rows[:, n_real:] = pad_value
    mask = th.zeros(2, ROWS)
    mask[:, :n_real] = 1.0
    return {"rows": rows, "mask": mask, "globals": th.randn(2, GLOBS, generator=g)}


def _outputs(policy, obs):
    with th.no_grad():
        dist = policy.get_distribution(obs)
        return dist.distribution.mean.clone(), policy.predict_values(obs).clone()


@pytest.mark.parametrize("context", ["mean", "attention"])
def test_rows_are_permutation_equivariant(context):
    policy = _policy(context=context)
    obs = _obs(ROWS)
    mean, value = _outputs(policy, obs)
    perm = th.randperm(ROWS, generator=th.Generator().manual_seed(1))
    permuted = dict(obs, rows=obs["rows"][:, perm], mask=obs["mask"][:, perm])
    mean_p, value_p = _outputs(policy, permuted)
    assert mean.abs().max() > 1e-2  # not trivially constant
    assert th.allclose(mean_p, mean[:, perm], atol=1e-5) and th.allclose(value_p, value, atol=1e-5)


@pytest.mark.parametrize("context", ["mean", "attention"])
def test_padded_rows_do_not_change_real_rows(context):
    policy = _policy(context=context)
    n_real = 3
    base = _obs(n_real)
    noisy = dict(base, rows=base["rows"].clone())
    noisy["rows"][:, n_real:] = th.randn(2, ROWS - n_real, FEATS) * 10
    (m0, v0), (m1, v1) = _outputs(policy, base), _outputs(policy, noisy)
    assert th.allclose(m0[:, :n_real], m1[:, :n_real], atol=1e-5) and th.allclose(v0, v1, atol=1e-5)
    assert (m1[:, n_real:] == 0).all()  # padded rows: mean 0
    # padded actions do not enter the likelihood
    actions = th.randn(2, ROWS)
    other = actions.clone()
    other[:, n_real:] = 5.0
    _, lp0, ent0 = policy.evaluate_actions(noisy, actions)
    _, lp1, ent1 = policy.evaluate_actions(noisy, other)
    assert th.allclose(lp0, lp1) and th.allclose(ent0, ent1)
    full_ent = policy.evaluate_actions(_obs(ROWS), actions)[2]
    assert th.allclose(ent0 * ROWS / n_real, full_ent)
    # and the policy runs with any number of real rows
    for n in (1, 5, ROWS):
        mean, value = _outputs(policy, _obs(n, seed=n))
        assert th.isfinite(mean).all() and th.isfinite(value).all() and value.shape == (2, 1)


def test_a_global_action_follows_the_rows_reads_the_whole_set_and_counts_in_the_likelihood():
    from rankrl.ranks.policy import widen_policy

    policy = _policy(n_global=1)
    n_real = 3
    base = _obs(n_real)
    noisy = dict(base, rows=base["rows"].clone())
    noisy["rows"][:, n_real:] = th.randn(2, ROWS - n_real, FEATS) * 10
    m0, m1 = _outputs(policy, base)[0], _outputs(policy, noisy)[0]
    assert m0.shape == (2, ROWS + 1) and th.allclose(m0, m1, atol=1e-5)  # padding changes nothing, the spend too
    assert (m1[:, n_real:ROWS] == 0).all() and (m0[:, -1].abs() > 1e-3).all()
    moved = dict(base, rows=base["rows"].clone())
    moved["rows"][:, 0] += 1.0  # another real row: the global action (a function of the whole set) moves
    assert not th.allclose(_outputs(policy, moved)[0][:, -1], m0[:, -1])
    actions = th.randn(2, ROWS + 1)
    other = actions.clone()
    other[:, -1] += 1.0
    _, lp0, ent0 = policy.evaluate_actions(base, actions)
    _, lp1, ent1 = policy.evaluate_actions(base, other)
    assert not th.allclose(lp0, lp1)  # the global action is a real action, unlike a padded row
    assert th.allclose(ent0 * (ROWS + 1) / (n_real + 1), policy.evaluate_actions(_obs(ROWS), actions)[2])
    wide = widen_policy(policy, ROWS + 4)  # a model with more modules: the global action stays last
    assert wide.action_space.shape == (ROWS + 5,)
    pad = {"rows": th.cat([base["rows"], th.zeros(2, 4, FEATS)], 1), "mask": th.cat([base["mask"], th.zeros(2, 4)], 1),
           "globals": base["globals"]}  # fmt: skip
    mw = _outputs(wide, pad)[0]
    assert th.allclose(mw[:, :n_real], m0[:, :n_real], atol=1e-5) and th.allclose(mw[:, -1], m0[:, -1], atol=1e-5)


def test_policy_rejects_wrong_spaces():
    box = spaces.Box(-1, 1, (4,), np.float32)
    with pytest.raises(ValueError, match="Dict"):
        SetActorCriticPolicy(box, box, lambda _: 1e-3)


def test_short_ppo_run_saves_and_loads(tmp_path):
    env_kwargs = dict(prompts_per_round=6, max_prompts=8, rollouts_per_prompt=4, n_max=12, rounds=8, n_prompts=48)
    model = train_allocator([env_kwargs, dict(env_kwargs, difficulty="bimodal")], 512, seed=0, n_steps=32,
                            batch_size=64, n_epochs=2)  # fmt: skip
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(64)
    assert any(not th.equal(before[k], v) for k, v in model.policy.state_dict().items())
    path = save_allocator(model, tmp_path / "alloc", env_kwargs)
    loaded = load_allocator(path)
    env = RolloutBudgetEnv(**env_kwargs)
    obs, _ = env.reset(seed=0)
    assert np.allclose(loaded.scores(obs), Allocator(model, env.config).scores(obs), atol=1e-6)
    alloc = loaded.allocate_env(env)
    assert alloc.sum() == 24 and alloc.min() >= 2 and alloc.max() <= 12
    # a trainer's call: a history, fewer prompts than rows, its own budget
    hist = RolloutHistory(100)
    hist.record(np.array([4, 9]), [np.ones(4), np.array([0.0, 1.0])], round_idx=0)
    alloc = loaded(hist, np.array([4, 9, 17, 50]), budget=20, round_idx=1, horizon=10)
    assert alloc.sum() == 20 and alloc.min() >= 2 and alloc.max() <= 12


def test_train_rejects_mismatched_envs():
    with pytest.raises(ValueError, match="disagree on n_max"):
        train_allocator([{"n_max": 16}, {"n_max": 32}], 64)


def test_unshared_extractors_and_attention_build():
    policy = _policy(share_features_extractor=False, context="attention", net_arch=dict(pi=[32, 32], vf=[16]))
    mean, value = _outputs(policy, _obs(4))
    assert mean.shape == (2, ROWS) and value.shape == (2, 1)
    assert policy.pi_features_extractor is not policy.vf_features_extractor


@pytest.mark.parametrize("kwargs", [dict(context="mean"), dict(context="attention", hidden=16, n_heads=2,
                                    share_features_extractor=False, net_arch=dict(pi=[8], vf=[8, 8]))])  # fmt: skip
def test_spec_and_safetensors_rebuild_the_same_policy_without_pickle(tmp_path, kwargs):
    from rankrl.set_policy import build_policy, load_policy_weights, policy_spec, save_policy_weights

    policy = _policy(**kwargs)
    spec = json.loads(json.dumps(policy_spec(policy)))  # plain JSON data
    path = save_policy_weights(policy, tmp_path / "w.safetensors")
    rebuilt = load_policy_weights(build_policy(spec), path).eval()
    obs = _obs(5)
    (m0, v0), (m1, v1) = _outputs(policy, obs), _outputs(rebuilt, obs)
    assert th.equal(m0, m1) and th.equal(v0, v1)
    assert policy_spec(rebuilt) == policy_spec(policy)


def test_spec_with_unknown_keys_or_classes_is_refused():
    from rankrl.set_policy import PolicySpecError, build_policy, policy_spec

    spec = policy_spec(_policy())
    with pytest.raises(PolicySpecError, match="unknown policy arguments"):
        build_policy({**spec, "kwargs": {**spec["kwargs"], "lr_schedule": "os.system"}})
    with pytest.raises(PolicySpecError, match="activation"):
        build_policy({**spec, "kwargs": {**spec["kwargs"], "activation_fn": "os.system"}})
    with pytest.raises(PolicySpecError, match="not a set-policy spec"):
        build_policy({**spec, "class": "PPO"})

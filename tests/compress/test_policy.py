"""The learned inference-rank policy: it depends on its budget, beats its untrained self and uniform ranks on text
and a model it was not trained on, and its files load without running code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rankrl.compress.allocate import ranks_flops, uniform
from rankrl.compress.env import AttentionRankEnv
from rankrl.compress.policy import (
    CompressPolicyConfig,
    load_compress_policy,
    make_ppo,
    policy_ranks,
    train_compress_policy,
)

BUDGETS = (0.25, 0.4, 0.55)
KW = dict(batch_size=8, max_length=16, max_modules=16, budget_range=(0.2, 0.6), quality="embedding")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    env = AttentionRankEnv(model="tiny-llama", texts="arith", **KW)
    cfg = CompressPolicyConfig(env=env.config, timesteps=256, n_steps=32, out=str(tmp_path_factory.mktemp("cp")),
                               wandb=False)  # fmt: skip
    torch.manual_seed(0)
    untrained = make_ppo(env, cfg).policy
    policy, rows = train_compress_policy(cfg, env)
    return env, cfg, untrained, policy, rows


def _mean_reward(env, choose):
    out = []
    for b in BUDGETS:
        env.reset(options={"budget": b})
        out.append(env.step_ranks(choose(env, b))[1])
    return float(np.mean(out))


def test_allocation_depends_on_the_budget_and_fits_it(trained):
    env, _, _, policy, _ = trained
    low, high = policy_ranks(policy, env, 0.25), policy_ranks(policy, env, 0.55)
    assert low != high and sum(high.values()) > sum(low.values())
    for b, r in ((0.25, low), (0.55, high)):
        env.reset(options={"budget": b})
        assert env.budget - max(m.unit for m in env.modules) < ranks_flops(env.modules, r) <= env.budget


def test_trained_beats_untrained_and_uniform_on_unseen_text_and_an_unseen_model(trained):
    env, _, untrained, policy, rows = trained
    assert rows[-1]["rollout/ep_reward"] > rows[0]["rollout/ep_reward"]
    mine = _mean_reward(env, lambda e, b: policy_ranks(policy, e, b))
    assert mine > _mean_reward(env, lambda e, b: policy_ranks(untrained, e, b)) + 0.05
    for kw in (dict(model="tiny-llama", texts="default"), dict(model="tiny-qwen", texts="arith")):
        other = AttentionRankEnv(**kw, **KW)
        assert _mean_reward(other, lambda e, b: policy_ranks(policy, e, b)) > \
            _mean_reward(other, lambda e, b: uniform(e.modules, e.budget)) + 0.05  # fmt: skip


def test_policy_files_are_safetensors_and_json_and_reload_to_the_same_ranks(trained, tmp_path):
    env, cfg, _, policy, _ = trained
    loaded = load_compress_policy(cfg.out)
    assert loaded.meta["trained_on"]["model"] == "tiny-llama"
    assert policy_ranks(loaded.policy, env, 0.4) == policy_ranks(policy, env, 0.4)
    with pytest.raises(FileNotFoundError, match="train-policy"):
        load_compress_policy(tmp_path)

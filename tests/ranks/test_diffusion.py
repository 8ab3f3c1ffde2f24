"""The DDIM refiner: deterministic for a seed, learns a known target over modules from a replay buffer, and
classifier-free guidance moves samples toward the vectors its condition stands for."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import rankrl.ranks.diffusion as D
from rankrl.ranks.diffusion import DiffusionConfig, RankDiffusion, ReplayBuffer

R, F, G, L = 8, 2, 1, 4
FLAGGED = (1, 4, 6)
CFG = DiffusionConfig(latent_dim=L, hidden=48, num_train_timesteps=100, num_inference_steps=20, lr=3e-3)


def _obs(rows: int = R) -> dict[str, np.ndarray]:
    feats = np.zeros((rows, F), np.float32)
    feats[list(FLAGGED), 0] = 1.0
    feats[:, 1] = np.linspace(0, 1, rows)
    return {"rows": feats, "mask": np.ones(rows, np.float32), "globals": np.array([0.5], np.float32)}


def test_doctests_and_config_checks():
    assert doctest.testmod(D).failed == 0
    with pytest.raises(ValueError, match="num_inference_steps"):
        DiffusionConfig(num_train_timesteps=10, num_inference_steps=20)


def test_sampler_is_deterministic_for_a_seed_bounded_and_leaves_padding_at_zero():
    torch.manual_seed(0)
    model = RankDiffusion.with_ddim(CFG, F, G)
    obs = _obs()
    obs["mask"][-2:] = 0.0
    a = model.predict_action(obs, np.zeros(L), seed=3)
    assert np.array_equal(a, model.predict_action(obs, np.zeros(L), seed=3))
    assert not np.array_equal(a, model.predict_action(obs, np.zeros(L), seed=4))
    assert a.shape == (R,) and np.all(np.abs(a) <= 1) and np.all(a[-2:] == 0)


def test_ddim_learns_a_known_target_over_modules():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = RankDiffusion.with_ddim(CFG, F, G)
    buf = ReplayBuffer(2000, R, F, G, L)
    obs = _obs()
    target = np.where(obs["rows"][:, 0] > 0, 0.8, -0.8)
    for _ in range(400):
        buf.add(obs, rng.normal(size=L), np.clip(target + rng.normal(0, 0.05, R), -1, 1), 1.0)

    def err(m):
        return float(np.mean([np.abs(m.predict_action(obs, np.zeros(L), seed=s) - target).mean() for s in range(4)]))

    before = err(model)
    losses = model.fit(buf, 800, batch_size=64)
    after = err(model)
    assert np.mean(losses[-50:]) < np.mean(losses[:50])
    assert after < 0.2 < before, (before, after)
    sample = model.predict_action(obs, np.zeros(L), seed=0)
    assert set(np.flatnonzero(sample > 0)) == set(FLAGGED)


def test_guidance_moves_samples_toward_the_high_reward_vectors():
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    model = RankDiffusion.with_ddim(CFG, F, G)
    buf = ReplayBuffer(2000, R, F, G, L)
    obs = _obs()
    z_good, z_bad = np.ones(L), -np.ones(L)
    for _ in range(300):
        buf.add(obs, z_good, np.full(R, 0.8) + rng.normal(0, 0.05, R), 1.0)  # high reward
        buf.add(obs, z_bad, np.full(R, -0.8) + rng.normal(0, 0.05, R), 0.0)  # low reward
    model.fit(buf, 800, batch_size=64)
    mean = {g: np.mean([model.predict_action(obs, z_good, seed=s, guidance_scale=g).mean() for s in range(6)])
            for g in (0.0, 1.0, 3.0)}  # fmt: skip
    assert mean[3.0] >= mean[1.0] - 0.05 and mean[1.0] > mean[0.0] + 0.2, mean

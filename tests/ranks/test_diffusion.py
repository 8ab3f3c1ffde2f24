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


def test_advantage_weights_compare_vectors_within_their_state_where_reward_weights_compare_states():
    # state A: vector P returns 1, Q returns 0; state B: every vector returns 5 (V(A) = 0.5, V(B) = 5)
    ret = torch.tensor([1.0, 0.0, 5.0, 5.0] * 16)
    value = torch.tensor([0.5, 0.5, 5.0, 5.0] * 16)
    rw = D.reward_weights(ret, 0.1)
    aw = D.advantage_weights(ret - value, 1.0, 20.0)
    assert rw[0] / rw[1] < 1.1 and rw[2] > rw[0]  # AirLLM's: A's better vector barely counts more; B counts most
    assert aw[0] / aw[1] > 10 and aw[1] < aw[2] < aw[0]  # AWR: P over Q in A by > 10x; B in between


def test_advantage_weighting_moves_samples_toward_the_better_vector_where_reward_weighting_clones():
    from dataclasses import replace

    rng = np.random.default_rng(0)
    obs = _obs()
    p = np.where(obs["rows"][:, 0] > 0, 0.8, -0.8)
    buf = ReplayBuffer(2000, R, F, G, L)
    for _ in range(300):  # half the entries are P (return 1), half its mirror (return 0); V(s) = 0.5
        buf.add(obs, np.zeros(L), np.clip(p + rng.normal(0, 0.05, R), -1, 1), 1.0)
        buf.add(obs, np.zeros(L), np.clip(-p + rng.normal(0, 0.05, R), -1, 1), 0.0)

    def critic(batch):
        return torch.full((len(batch["ret"]),), 0.5)

    agree = {}
    for weighting in ("reward", "advantage"):
        torch.manual_seed(0)
        model = RankDiffusion.with_ddim(replace(CFG, weighting=weighting), F, G)
        model.fit(buf, 600, batch_size=64, value_fn=critic)
        # +1: every sample is P on the flagged rows; -1: every one is its mirror; 0: a coin flip
        agree[weighting] = float(np.mean([np.sign(model.predict_action(obs, np.zeros(L), seed=s)[list(FLAGGED)])
                                          .mean() for s in range(48)]))  # fmt: skip
    # reward weights 1.1 vs 0.9 leave the buffer's 50/50; the advantage-weighted fit prefers P (~65-75% of samples
    # over fit seeds; the exp(1)/exp(-1) weights would give 88% at convergence: the denoiser learns mixture weights
    # slowly)
    assert abs(agree["reward"]) < 0.15 and agree["advantage"] > agree["reward"] + 0.15, agree
    with pytest.raises(ValueError, match="value_fn"):
        RankDiffusion.with_ddim(replace(CFG, weighting="advantage"), F, G).fit(buf, 1)
    with pytest.raises(ValueError, match="--weighting"):
        DiffusionConfig(weighting="awr")


def test_replay_buffer_returns_set_after_the_rollout_and_old_checkpoints_load():
    buf = ReplayBuffer(4, R, F, G, L)
    for i in range(6):  # wraps: entries 2..5 are left, in slots 2, 3, 0, 1
        buf.add(_obs(), np.zeros(L), np.zeros(R), float(i))
    buf.set_recent("ret", np.array([10.0, 11.0, 12.0]))  # the last three added: rewards 3, 4, 5
    assert buf.data["ret"].tolist() == [11.0, 12.0, 2.0, 10.0]
    tensors, counters = buf.state()
    old = {k: v for k, v in tensors.items() if k != "ret"}  # a checkpoint from before returns were stored
    fresh = ReplayBuffer(4, R, F, G, L)
    fresh.load_state(old, counters)
    assert fresh.data["ret"].tolist() == fresh.data["reward"].tolist() == [4.0, 5.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="only 4 entries"):
        buf.set_recent("ret", np.zeros(5))


def test_init_noise_zero_makes_the_sample_a_function_of_state_and_latent_only():
    from dataclasses import replace

    torch.manual_seed(0)
    model = RankDiffusion.with_ddim(replace(CFG, init_noise=0.0), F, G)
    obs = _obs()
    a = model.predict_action(obs, np.zeros(L), seed=1)
    assert np.array_equal(a, model.predict_action(obs, np.zeros(L), seed=2))  # the seed no longer matters
    assert not np.array_equal(a, model.predict_action(obs, np.ones(L), seed=1))  # the latent does
    with pytest.raises(ValueError, match="--init_noise"):
        DiffusionConfig(init_noise=-1.0)


LINEAR = DiffusionConfig(hidden=48, num_train_timesteps=100, num_inference_steps=20, lr=3e-3, decoding="linear",
                         init_noise=0.0, explore_noise=0.2)  # fmt: skip


def test_linear_decoding_starts_as_the_latents_scorer_and_explores_only_in_training_rollouts():
    torch.manual_seed(0)
    model = RankDiffusion.with_ddim(LINEAR, F, G)
    assert model.latent_dim == F  # one weight per row feature, whatever latent_dim says
    obs = _obs()
    flagged = np.array([1.0, 0.0], np.float32)  # weight on the "flagged" feature only
    a = model.predict_action(obs, flagged, seed=1)
    base = D.linear_decoding(torch.as_tensor(obs["rows"])[None], torch.ones(1, R), torch.as_tensor(flagged)[None])
    assert np.allclose(a, base[0].numpy(), atol=1e-6)  # untrained: the residual is exactly 0
    assert np.all(a[list(FLAGGED)] > 0.5) and np.all(np.delete(a, FLAGGED) < -0.3)
    b = model.predict_action(obs, -flagged, seed=1)
    assert np.allclose(a, -b, atol=1e-6)  # the decision follows PPO's latent
    assert np.array_equal(a, model.predict_action(obs, flagged, seed=2))  # deterministic when applied
    (e1, r1), (e2, _) = (model.sample(obs, flagged, seed=s, explore=True) for s in (1, 2))
    assert not np.allclose(e1, e2) and 0.02 < np.abs(e1 - a).mean() < 0.3  # explore_noise 0.2 in training rollouts
    assert 0.1 < r1.std() < 0.3  # the buffer gets the residual (here the noise alone), not the scores
    logits = D.linear_logits(torch.as_tensor(obs["rows"])[None], torch.ones(1, R), torch.as_tensor(flagged)[None])[0]
    assert np.allclose(e1, np.tanh(logits.numpy() + r1), atol=1e-6)  # added before the tanh: the scores never clip
    # modules decoded at -1: the stored residuals stay unbiased (clipping scores - base would keep only upward noise)
    strong = np.array([3.0, 0.0], np.float32)
    draws = [model.sample(obs, strong, seed=s, explore=True) for s in range(40)]
    off = np.delete(np.arange(R), FLAGGED)
    assert abs(np.mean([x0[off] for _, x0 in draws])) < 0.03
    assert np.all(np.array([sc[off] for sc, _ in draws]) < -0.9)
    with pytest.raises(ValueError, match="--decoding"):
        DiffusionConfig(decoding="mlp")
    with pytest.raises(ValueError, match="--explore_noise"):
        DiffusionConfig(explore_noise=-0.1)


def test_the_residual_refiner_learns_a_correction_the_decoding_cannot_express():
    # the buffer's residuals are +0.6 on module 0 and -0.6 on module 7 (plus noise) whatever the latent, a correction no
    # latent (weights on "flagged" and depth) gives; the fitted refiner adds it, the untrained one does not
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = RankDiffusion.with_ddim(LINEAR, F, G)
    obs = _obs()
    rows, mask = torch.as_tensor(obs["rows"])[None], torch.ones(1, R)
    delta = np.zeros(R, np.float32)
    delta[0], delta[-1] = 0.6, -0.6
    buf = ReplayBuffer(2000, R, F, G, F)
    for _ in range(400):
        buf.add(obs, rng.uniform(-0.5, 0.5, F).astype(np.float32), delta + rng.normal(0, 0.03, R), 1.0)

    def correction(m, z):  # what the refiner adds to the decoding's logits
        logits = D.linear_logits(rows, mask, torch.as_tensor(z)[None])[0].numpy()
        return np.arctanh(np.clip(m.predict_action(obs, z, seed=0), -0.999999, 0.999999)) - logits

    z = np.array([0.3, -0.2], np.float32)
    assert np.abs(correction(model, z)).max() < 1e-6
    model.fit(buf, 600, batch_size=64)
    c = correction(model, z)
    assert c[0] > 0.3 and c[-1] < -0.3 and np.abs(c[1:-1]).mean() < 0.15, c

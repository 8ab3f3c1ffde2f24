"""``rankrl train-policy --algo diffusion``: AirLLM's two-level rank policy on the LoRARank env. PPO acts in a coarse
latent (a Gaussian over ``diffusion.latent_dim`` numbers, or one weight per row feature with ``--diffusion.decoding
linear``; PPO's log-probability covers only the latent), the DDIM
refiner (:mod:`rankrl.ranks.diffusion`) turns latent + state into every module's score, and after every PPO rollout
the refiner is refit off-policy on the replay buffer (reward-weighted), alternating.

One policy folder holds both parts, with nothing that runs code when loaded: ``policy.json`` (the usual layout record
plus ``algo: diffusion``, the coarse network's spaces and the refiner's config), ``policy.safetensors`` (the coarse
PPO network) and ``refiner.safetensors``. :class:`LatentRefinerPolicy` is what ``rankrl apply`` and ``rankrl
baselines`` get back from :func:`rankrl.ranks.policy.load_policy` for such a folder.

Checkpoints and ``--resume`` work as for PPO (:mod:`rankrl.ranks.train`, nothing pickled): the coarse network and
its Adam state in ``checkpoint.safetensors`` + ``checkpoint_optimizer.pt``, the refiner in
``checkpoint_refiner.safetensors`` + ``checkpoint_refiner_optimizer.pt`` (``weights_only``), the replay buffer in
``checkpoint_buffer.safetensors``, and last ``checkpoint.json`` (counters, config, both networks). Every rollout
logs both parts' losses (SB3's ``train/*`` with ``train/ppo_loss``; the refit's ``train/diffusion_loss``), the
guidance scale, the episodes it finished and each module's mean rank (``rank/layer_<i>``), which
``rank_heatmap_training.png`` draws over training (W&B ``rank/heatmap_training``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rankrl.ranks.diffusion import RankDiffusion, ReplayBuffer
from rankrl.ranks.episodes import episode_summary, plot_rank_heatmap, rollout_metrics
from rankrl.ranks.latent_policy import REFINER_FILE, LatentRefinerPolicy, coarse_policy_kwargs, coarse_spec
from rankrl.ranks.policy import POLICY_FILE, POLICY_META, policy_meta, save_json
from rankrl.ranks.train import TrainPolicyConfig, check_resumable, load_checkpoint, make_env, save_checkpoint

__all__ = ["CHECKPOINT_BUFFER", "CHECKPOINT_REFINER", "CHECKPOINT_REFINER_OPTIMIZER", "LatentRefinerEnv",
           "load_refiner_checkpoint", "save_refiner_checkpoint", "train_diffusion_policy"]  # fmt: skip

CHECKPOINT_REFINER, CHECKPOINT_REFINER_OPTIMIZER = "checkpoint_refiner.safetensors", "checkpoint_refiner_optimizer.pt"
#: the whole filled replay buffer is kept (every entry, float32), so a resumed refit samples exactly what an
#: uninterrupted one would; at the defaults (10k entries x 64 rows x 22 features) that is ~60 MB per checkpoint
CHECKPOINT_BUFFER = "checkpoint_buffer.safetensors"
#: columns of rank_heatmap_training.png at most (rollouts evenly thinned beyond)
HEATMAP_COLUMNS = 24


class LatentRefinerEnv(gym.Wrapper):
    """The rank env seen by the coarse PPO: the action is the latent; the refiner makes it every module's score, the
    inner env steps on that, and (state, latent, scores, reward) goes to the replay buffer. The inner env's global
    actions (``--env.spend_action``: the fraction of the budget to spend) are PPO's too: they follow the latent in
    the coarse action and go to the inner env as they are (the refiner neither sees nor makes them)."""

    def __init__(self, env: gym.Env, refiner: RankDiffusion, buffer: ReplayBuffer, seed: int = 0) -> None:
        super().__init__(env)
        self.refiner, self.buffer, self.draws = refiner, buffer, seed
        self.n_global = env.action_space.shape[0] - env.observation_space["mask"].shape[0]
        self.action_space = spaces.Box(-1.0, 1.0, (refiner.latent_dim + self.n_global,), dtype=np.float32)
        self._obs: Any = None
        self._running: list[dict] = []
        #: :func:`rankrl.ranks.episodes.episode_summary` of every episode finished since the last :meth:`pop_finished`
        self.finished: list[dict[str, Any]] = []

    def pop_finished(self) -> list[dict[str, Any]]:
        """The episodes finished since the last call (their summaries), emptied."""
        out, self.finished = self.finished, []
        return out

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        self._obs, info = self.env.reset(**kwargs)
        return self._obs, info

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        latent, extra = action[: self.refiner.latent_dim], action[self.refiner.latent_dim :]
        self.draws += 1  # the sampler's seed: saved in checkpoints, so a resumed run draws on
        scores, x0 = self.refiner.sample(self._obs, latent, seed=self.draws, explore=True)
        obs, reward, terminated, truncated, info = self.env.step(np.concatenate([scores, extra]).astype(np.float32))
        self.buffer.add(self._obs, latent, x0, float(reward))
        self._obs = obs
        self._running.append(info)
        if terminated or truncated:
            self.finished.append(episode_summary(self._running))
            self._running = []
        return obs, reward, terminated, truncated, info


def save_refiner_checkpoint(refiner: RankDiffusion, buffer: ReplayBuffer, out: Path) -> dict[str, Any]:
    """The refiner's weights and Adam state and the replay buffer beside a PPO checkpoint, each atomic; returns the
    buffer's counters for ``checkpoint.json`` (written after, by :func:`rankrl.ranks.train.save_checkpoint`)."""
    import torch
    from safetensors.torch import save_file

    from rankrl.atomic import atomic_write

    weights, optimizer = refiner.state_dict(), refiner.optimizer.state_dict()
    tensors, counters = buffer.state()
    atomic_write(out / CHECKPOINT_REFINER, lambda p: save_file(weights, str(p)), ".safetensors")
    atomic_write(out / CHECKPOINT_REFINER_OPTIMIZER, lambda p: torch.save(optimizer, p), ".pt")
    atomic_write(out / CHECKPOINT_BUFFER, lambda p: save_file(tensors, str(p)), ".safetensors")
    return counters


def load_refiner_checkpoint(refiner: RankDiffusion, buffer: ReplayBuffer, out: Path, counters: dict) -> None:
    """Load :func:`save_refiner_checkpoint` files (nothing unpickled: safetensors and ``weights_only=True``)."""
    import torch
    from safetensors.torch import load_file

    files = (CHECKPOINT_REFINER, CHECKPOINT_REFINER_OPTIMIZER, CHECKPOINT_BUFFER)
    if missing := [f for f in files if not (out / f).exists()]:
        raise SystemExit(f"--resume: {out} has no {', '.join(missing)}: not an --algo diffusion checkpoint")
    refiner.load_state_dict(load_file(str(out / CHECKPOINT_REFINER)))
    refiner.optimizer.load_state_dict(torch.load(out / CHECKPOINT_REFINER_OPTIMIZER, weights_only=True))
    buffer.load_state(load_file(str(out / CHECKPOINT_BUFFER)), counters)


def train_diffusion_policy(config: TrainPolicyConfig, *, calibration: Any = None) -> dict[str, Any]:
    """PPO on the coarse latent with the DDIM in the loop, refits between rollouts; checkpoints (``--resume``
    continues them), writes the policy folder and returns a summary (sim evaluation by budget next to uniform, both
    parts' last losses). SIGINT / SIGTERM stop after the current rollout and refit, with a checkpoint and the policy
    saved (no evaluation; ``interrupted`` in the summary)."""
    from rankrl.interrupt import stop_on_signals

    with stop_on_signals() as stop:
        return _train(config, calibration, stop)


def _train(config: TrainPolicyConfig, calibration: Any, stop: Any) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rankrl.atomic import atomic_write
    from rankrl.ranks.episodes import rollout_episode, uniform_allocator
    from rankrl.ranks.sim import calibrate
    from rankrl.ranks.train import fixed_budget, sim_budget_table
    from rankrl.resume import truncate_metrics
    from rankrl.set_policy import save_policy_weights
    from rankrl.tracking import Tracker

    out = Path(config.out)
    state = check_resumable(config, out) if config.resume else None
    if config.backend == "sim" and calibration is None:
        calibration = calibrate(config.env, config.probes, config.probe_steps or config.run.steps,
                                probe_evals=config.probe_evals, capacity=config.sim_capacity)  # fmt: skip
    torch.manual_seed(config.run.seed)
    base = make_env(config, calibration=calibration)
    obs_space = base.observation_space
    n_rows, n_features = obs_space["rows"].shape
    n_globals = obs_space["globals"].shape[0]
    dc = config.diffusion
    refiner = RankDiffusion.with_ddim(dc, n_features, n_globals)
    buffer = ReplayBuffer(dc.buffer_size, n_rows, n_features, n_globals, refiner.latent_dim)
    env = LatentRefinerEnv(base, refiner, buffer, seed=config.run.seed)
    vec = DummyVecEnv([lambda: env])
    vec.seed(config.run.seed)
    model = PPO("MultiInputPolicy", vec, policy_kwargs=coarse_policy_kwargs(dc.coarse_input),
                n_steps=config.n_steps, batch_size=min(config.ppo_batch_size, config.n_steps),
                n_epochs=config.n_epochs, learning_rate=config.ppo_lr, gamma=0.95, gae_lambda=0.95, clip_range=0.2,
                ent_coef=config.ent_coef, seed=config.run.seed, device="cpu", verbose=0)  # fmt: skip
    network = {"coarse": coarse_spec(model.policy), "refiner": asdict(dc), "n_features": int(n_features),
               "n_globals": int(n_globals)}  # fmt: skip
    if state is not None:
        load_checkpoint(model, out, state, network)
        load_refiner_checkpoint(refiner, buffer, out, state["buffer"])
        env.draws = int(state["draws"])
        print(f"resuming from {out} at {model.num_timesteps} of {config.timesteps} env steps "
              f"(replay buffer {len(buffer)})")  # fmt: skip
        if cut := truncate_metrics(out, int(state["timesteps_done"])):
            print(f"metrics.jsonl: dropped {cut} rows logged after the checkpoint (step {state['timesteps_done']})")
    tracker = Tracker(out, config=asdict(config) | {"job": "train-policy-diffusion"}, use_wandb=config.wandb,
                      resume=config.resume)  # fmt: skip

    def checkpoint() -> None:
        counters = save_refiner_checkpoint(refiner, buffer, out)
        save_checkpoint(model, out, config, network=network, extra={"algo": "diffusion", "buffer": counters,
                                                                    "draws": env.draws})  # fmt: skip

    def critic(batch: dict) -> Any:
        """The coarse PPO's current V(s) of a replay batch's states."""
        return model.policy.predict_values({k: batch[k] for k in ("rows", "mask", "globals")}).reshape(-1)

    t0, losses, last_ckpt = time.time(), [float("nan")], int(model.num_timesteps)
    try:
        while model.num_timesteps < config.timesteps and not stop:
            model.learn(config.n_steps, reset_num_timesteps=False, progress_bar=False)
            # the rollout's TD(lambda) returns (PPO's GAE targets), one per entry it added, for --diffusion.weighting
            # advantage (one env: the rollout buffer's order is the replay buffer's)
            buffer.set_recent("ret", np.asarray(model.rollout_buffer.returns).reshape(-1))
            if config.refit_steps:
                losses = refiner.fit(buffer, config.refit_steps, seed=int(model.num_timesteps), value_fn=critic)
            step = int(model.num_timesteps)
            ppo = {k: v for k, v in model.logger.name_to_value.items() if k.startswith("train/")}
            eps = env.pop_finished()
            metrics = {**ppo, "train/ppo_loss": float(ppo.get("train/loss", float("nan"))), **rollout_metrics(eps),
                       "train/diffusion_loss": float(np.mean(losses)), "train/diffusion_loss_last": losses[-1],
                       "train/guidance_scale": dc.guidance_scale, "train/replay_size": len(buffer)}  # fmt: skip
            if eps:  # each module's mean rank over the decisions of the episodes this rollout finished
                allocs = [a for e in eps for a in e["ranks"]]
                metrics.update({f"rank/layer_{i}": float(np.mean([a[t.name] for a in allocs]))
                                for i, t in enumerate(base.targets)})  # fmt: skip
            tracker.log(metrics, step=step)
            if config.checkpoint_every and step - last_ckpt >= config.checkpoint_every:
                checkpoint()
                last_ckpt = step
                _training_heatmap(tracker, out, base, config, step)
        checkpoint()
        policy = LatentRefinerPolicy(model.policy, refiner)
        policy.set_training_mode(False)
        meta = policy_meta(config, int(model.num_timesteps))
        meta["algo"] = "diffusion"
        meta["diffusion"] = {"config": asdict(dc), "coarse": coarse_spec(model.policy), "n_features": n_features,
                             "n_globals": n_globals}  # fmt: skip
        save_policy_weights(model.policy, out / POLICY_FILE)
        weights = refiner.state_dict()
        atomic_write(out / REFINER_FILE, lambda p: save_file(weights, str(p)), ".safetensors")
        save_json(meta, out / POLICY_META)
        step = int(model.num_timesteps)
        _training_heatmap(tracker, out, base, config, step)
        summary: dict[str, Any] = {"timesteps": step, "seconds": time.time() - t0,
                                   "diffusion_loss": float(np.mean(losses))}  # fmt: skip
        if stop:
            summary["interrupted"] = stop.name
            print(f"\n{stop.name}: stopped at {step} of {config.timesteps} env steps; checkpoint and policy saved in "
                  f"{out} (no evaluation). Continue with the same flags and --resume", flush=True)  # fmt: skip
            return summary

        def act(obs: Any, _env: Any) -> np.ndarray:
            return policy.predict(obs)[0]

        table = {}
        if config.backend == "sim":
            table = sim_budget_table(config, calibration, {"diffusion": act, "uniform": uniform_allocator})
            sim_env = make_env(config, "sim", calibration, fixed_budget(config))
            sim = episode_summary(rollout_episode(sim_env, act, config.run.seed + 1))
            png = plot_rank_heatmap(sim_env.targets, sim["ranks"], out / "rank_heatmap.png", r_max=config.run.r_max,
                                    title=f"diffusion policy ranks on sim {config.run.model} (reward "
                                          f"{sim['reward']:.3f})")  # fmt: skip
            tracker.image("rank/heatmap", png, step=step)
        summary["sim_by_budget"] = table
        tracker.summary({"timesteps": step, "diffusion_loss": summary["diffusion_loss"]})
        atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1, default=str)))
        for r, row in table.items():
            print(f"  mean rank {r}: " + ", ".join(f"{k} reward {v['reward']:.4f} acc {v['accuracy']:.3f}"
                                                   for k, v in row.items()))  # fmt: skip
        print(f"diffusion policy ({summary['timesteps']} steps, {summary['seconds']:.0f}s) -> {out}")
        return summary
    finally:
        tracker.finish()


def _training_heatmap(tracker: Any, out: Path, env: Any, config: TrainPolicyConfig, step: int) -> None:
    """``rank_heatmap_training.png``: each module's mean rank per logged rollout (from ``metrics.jsonl``, so a
    resumed run draws its whole history), at most HEATMAP_COLUMNS columns; also to W&B."""
    from rankrl.tracking import read_metrics

    rows = [r for r in read_metrics(out) if "rank/layer_0" in r]
    if not rows:
        return
    if len(rows) > HEATMAP_COLUMNS:
        rows = [rows[int(i)] for i in np.linspace(0, len(rows) - 1, HEATMAP_COLUMNS)]
    allocs = [{t.name: r[f"rank/layer_{i}"] for i, t in enumerate(env.targets)} for r in rows]
    png = plot_rank_heatmap(env.targets, allocs, out / "rank_heatmap_training.png", r_max=config.run.r_max,
                            columns=[str(r["step"]) for r in rows], xlabel="env step",
                            title=f"mean rank per module over training ({config.run.model}, --algo diffusion)")
    tracker.image("rank/heatmap_training", png, step=step)

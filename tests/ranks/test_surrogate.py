"""The learned surrogate: it recovers a known allocation effect, fails on noise, and drives the sim env."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rankrl.ranks.runs import allocation, read_runs
from rankrl.ranks.surrogate import (
    FEATURE_NAMES,
    LearnedSurrogate,
    allocation_features,
    held_out_spearman,
    module_rows,
)
from rankrl.targets import TargetModule

DATASET = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "rank_runs.jsonl"


def _targets(layers: int, mlp: tuple[str, ...] = ("up", "down"), width: int = 32) -> list[TargetModule]:
    out = []
    for i in range(layers):
        for k in ("q", "k", "v", "o", *mlp):
            a, b = (width, 2 * width) if k in ("up", "gate") else (2 * width, width) if k == "down" else (width, width)
            out.append(TargetModule(f"l{i}.{k}", i, layers, k, a, b))
    return out


def _rows(truth, *, noise: float = 0.01, seed: int = 0, pairs=(("m1", 3, ("up", "down")), ("m2", 4, ("gate", "up",
          "down"))), steps: int = 10, top: float = 0.4) -> list[dict]:  # fmt: skip
    """Synthetic dataset rows: log(loss / loss at r_max) = truth(features) + noise, for a few 'models'."""
    rng = np.random.default_rng(seed)
    rows = []
    for model, layers, mlp in pairs:
        ts = _targets(layers, mlp)
        plan = [("uniform", 8.0)] + [(s, b) for b in (0.5, 1.0, 2.0, 4.0) for s in (
            "uniform", "attention", "mlp", "qv", "depth-up", "depth-down", "random-0", "random-1", "random-2")]
        for s, b in plan:
            ranks = allocation(ts, s, b, 8)
            r = [ranks[t.name] for t in ts]
            f = dict(zip(FEATURE_NAMES, allocation_features(module_rows(ts), r, 8), strict=True))
            y = 0.0 if (s, b) == ("uniform", 8.0) else truth(f) + noise * rng.standard_normal()
            rows.append(dict(version=1, model=model, task="t", labels="coarse", seed=0, steps=steps, lr=1e-3, r_max=8,
                             batch_size=8, max_length=32, max_eval=16, max_train=None, alpha=16.0, warmup_steps=0,
                             structure=s, budget_rank=b, modules=[list(m) for m in module_rows(ts)], ranks=r,
                             loss0=0.7, eval_loss=top * math.exp(y), accuracy=1 - top * math.exp(y)))  # fmt: skip
    return rows


def _mlp_matters(f):  # MLP rank helps three times as much as attention rank; everything saturates
    return -0.6 * f["mlp_capacity"] - 0.2 * f["vo_capacity"] - 0.1 * f["qk_capacity"] + 0.5


def _attention_matters(f):  # the other way round: attention rank helps most
    return -0.6 * f["qk_capacity"] - 0.4 * f["vo_capacity"] - 0.1 * f["mlp_capacity"] + 0.5


def test_surrogate_reads_the_run_length_where_the_order_of_allocations_flips():
    # short runs reward MLP rank, long runs attention rank (the order changes with length, as it did on TREC-6)
    rows = _rows(_mlp_matters, steps=10) + _rows(_attention_matters, steps=40, seed=1, top=0.2)
    sur = LearnedSurrogate(rows)
    ts = _targets(3)
    mods = module_rows(ts)
    att, mlp = ([allocation(ts, s, 2.0, 8)[t.name] for t in ts] for s in ("attention", "mlp"))
    short, long_ = sur.predict(mods, [att, mlp], 8, steps=10), sur.predict(mods, [att, mlp], 8, steps=40)
    assert short[1] < short[0] - 0.1 and long_[0] < long_[1] - 0.1
    # the reference (uniform r_max) is the run length's own
    assert sur.top_ratio("m1/t", 10) == pytest.approx(0.4 / 0.7)
    assert sur.top_ratio("m1/t", 40) == pytest.approx(0.2 / 0.7)
    assert sur.top_ratio("unseen/t", 40) == pytest.approx(0.2 / 0.7)  # other pairs at that length
    # a sim built for each length rewards that length's better allocation
    from rankrl.ranks.features import STATIC_FEATURE_NAMES

    static = np.full((len(ts), len(STATIC_FEATURE_NAMES)), 0.5, dtype=np.float32)
    for n, better, worse in ((10, mlp, att), (40, att, mlp)):
        cal = sur.calibration(ts, static, 8, run_steps=n, model="m1", task="t")
        assert cal.capacity(better) > cal.capacity(worse) + 0.1
    with pytest.raises(ValueError, match="steps must be >= 1"):
        allocation_features(mods, att, 8, steps=0)
    # the held-out check reports each run length apart (and knows each length's better allocation)
    held = held_out_spearman(rows)
    assert set(held["by_length"]["m1/t"]) == set(held["pooled_by_length"]) == {"10", "40"}
    assert min(v["rho"] for d in held["by_length"].values() for v in d.values()) > 0.8


def test_features_read_where_the_rank_goes():
    ts = _targets(3)
    mods = module_rows(ts)
    att = dict(zip(FEATURE_NAMES, allocation_features(mods, [8 if t.kind in "qkvo" else 0 for t in ts], 8),
                   strict=True))  # fmt: skip
    assert att["mlp_share"] == 0 and att["mlp_frac"] == 0 and att["qk_frac"] == 1 and att["vo_capacity"] == 1
    late = allocation_features(mods, [8 if t.layer_index == 2 else 0 for t in ts], 8)
    assert dict(zip(FEATURE_NAMES, late, strict=True))["depth_share_2"] == 1
    # a model without some group (no MLP targets) reads NaN there, not "off"
    no_mlp = [t for t in ts if t.kind in "qkvo"]
    f = dict(zip(FEATURE_NAMES, allocation_features(module_rows(no_mlp), [1] * len(no_mlp), 8), strict=True))
    assert math.isnan(f["mlp_frac"]) and f["qk_frac"] == 1 / 8


def test_surrogate_recovers_a_known_effect_and_cannot_on_noise():
    good = held_out_spearman(_rows(_mlp_matters))
    assert min(good["allocations"].values()) > 0.9
    assert min(good["pairs"].values()) > 0.8  # the effect is the same on the left-out "model"
    noise = held_out_spearman(_rows(lambda f: 0.0, noise=0.05))
    assert abs(noise["pooled_allocations"]) < 0.3


def test_learned_sim_env_rewards_what_the_data_rewards():
    import gymnasium as gym

    import rankrl.ranks  # noqa: F401  (registers the envs)

    rows = _rows(_mlp_matters)
    sur = LearnedSurrogate(rows)
    ts = _targets(3)
    from rankrl.ranks.features import STATIC_FEATURE_NAMES

    static = np.full((len(ts), len(STATIC_FEATURE_NAMES)), 0.5, dtype=np.float32)
    cal = sur.calibration(ts, static, 8, run_steps=10, model="m1", task="t")
    assert cal.top_ratio == pytest.approx(0.4 / 0.7)
    env = gym.make("rankrl/LoRARank-Sim-v1", calibration=cal, steps=10, decisions=1, budget_rank=2.0,
                   rank_grid=(0, 1, 2, 4, 8), w_params=0.0, w_tx=0.0).unwrapped  # fmt: skip
    rewards = {}
    for s in ("attention", "mlp"):
        env.reset(seed=0)
        _, reward, done, _, info = env.step_allocation(allocation(ts, s, 2.0, 8))
        assert done
        rewards[s] = reward
        want = math.exp(math.log(0.4 / 0.7) + sur.predict(module_rows(ts), [list(info["ranks"].values())], 8)[0])
        assert info["quality/eval_loss"] == pytest.approx(0.7 * min(want, 1.0), rel=1e-6)  # ends at the prediction
    assert rewards["mlp"] > rewards["attention"] + 0.05


def test_committed_dataset_is_readable_and_tells_allocations_apart():
    if not DATASET.exists():
        pytest.skip(f"{DATASET} not collected yet (rankrl collect-runs)")
    rows = read_runs(DATASET)
    assert len(rows) >= 30
    result = held_out_spearman(rows)
    # the numbers the README reports (benchmarks/rank_surrogate.py). On the MiniLM pairs allocation moves the live
    # loss well beyond seed noise; a surrogate blind to allocation gives rho ~0 +- 0.15 there (n = 32..48), so 0.3
    # is a floor that can fail, not the goal (0.8, reported as not met where it is not). The tiny models barely
    # learn in 40 steps (loss spread 0.005 on tiny-bert), so their rho is noise and is not asserted.
    minilm = {p: rho for p, rho in result["allocations"].items() if p.startswith("minilm/")}
    assert len(minilm) >= 2, result
    assert all(rho > 0.3 for rho in minilm.values()), result


# ------------------------------------------------- a policy trained on the learned sim follows the data and transfers
@pytest.fixture(scope="module")
def learned_policy(tmp_path_factory):
    """2,048 PPO steps on the learned sim of 'm1' (a surrogate fitted on synthetic runs where MLP rank helps most);
    one-shot allocations, budgets drawn from mean rank 0.5..8, quality is the whole reward."""
    from rankrl.ranks.env import LoRARankConfig
    from rankrl.ranks.finetune import FineTuneConfig
    from rankrl.ranks.policy import load_policy
    from rankrl.ranks.sim import SimCalibration
    from rankrl.ranks.train import TrainPolicyConfig, train_policy

    rows = _rows(_mlp_matters)
    syn = SimCalibration.synthetic(num_layers=3, hidden=32, intermediate=64, r_max=8, run_steps=40)
    cal = LearnedSurrogate(rows, exclude_pairs=["m2/t"]).calibration(syn.targets, syn.static, 8, run_steps=40,
                                                                      model="m1", task="t")  # fmt: skip
    out = tmp_path_factory.mktemp("learned-sim") / "run"
    run = FineTuneConfig(model="tiny-bert", steps=40, batch_size=8, max_eval=16, max_train=128, threads=1)
    env = LoRARankConfig(run=run, decisions=1, max_modules=32, budget_rank_range=(0.5, 8.0), w_params=0.0,
                         w_tx=0.0)  # fmt: skip
    config = TrainPolicyConfig(env=env, timesteps=2048, n_steps=128, ppo_batch_size=64, n_epochs=5, out=str(out),
                               wandb=False, progress=False, checkpoint_every=0)  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RANKRL_CACHE", str(tmp_path_factory.mktemp("cache")))
        result = train_policy(config, calibration=cal)
    return result, load_policy(out), cal


def _static(targets):
    from rankrl.ranks.features import shape_features

    n = len(targets)
    return np.concatenate([shape_features(targets), np.full((n, 5), 0.5), np.tile([1.0, math.log(2), 1.0], (n, 1))],
                          axis=1).astype(np.float32)  # fmt: skip


def test_learned_sim_policy_depends_on_budget_and_beats_its_untrained_self(learned_policy):
    from rankrl.ranks.budgets import BudgetSpec
    from rankrl.ranks.policy import allocate

    result, loaded, cal = learned_policy
    gains = [row["policy"]["reward"] - row["untrained"]["reward"] for row in result.sim_budgets.values()]
    assert np.mean(gains) > 1e-3, result.sim_budgets
    allocs = {b: allocate(loaded, cal.targets, cal.static, BudgetSpec(rank=b)).ranks for b in (1.0, 2.0, 4.0)}
    assert len({tuple(a.values()) for a in allocs.values()}) == 3


def test_learned_sim_policy_moves_rank_where_the_data_says_and_beats_uniform_on_an_unseen_model(learned_policy):
    """'m2' (4 layers) is left out of the surrogate's data and the policy never saw it: judged by the ground truth
    the runs were generated from, its allocation beats uniform LoRA at equal parameters, and it gives the MLP a
    larger share than uniform does (what the data says pays)."""
    from rankrl.ranks.budgets import BudgetSpec
    from rankrl.ranks.policy import allocate

    _, loaded, _ = learned_policy
    m2 = _targets(4)
    mods = module_rows(m2)
    gains, shares = {}, {}
    for b in (1.0, 2.0, 4.0):
        pol = allocate(loaded, tuple(m2), _static(m2), BudgetSpec(rank=b)).ranks
        uni = allocation(m2, "uniform", b, 8)
        f_pol = dict(zip(FEATURE_NAMES, allocation_features(mods, [pol[t.name] for t in m2], 8), strict=True))
        f_uni = dict(zip(FEATURE_NAMES, allocation_features(mods, [uni[t.name] for t in m2], 8), strict=True))
        gains[b] = _mlp_matters(f_uni) - _mlp_matters(f_pol)  # > 0: lower true loss than uniform
        shares[b] = (f_pol["mlp_share"], f_uni["mlp_share"])
    print(gains, shares)
    assert np.mean(list(gains.values())) > 0, (gains, shares)
    assert all(p > u for p, u in shares.values()), shares

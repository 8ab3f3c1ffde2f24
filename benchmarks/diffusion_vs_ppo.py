"""PPO alone vs PPO + DDIM refiner (AirLLM's two-level policy) on the calibrated LoRARank sim, same env, same env
steps, several seeds, in a channel regime where bandwidth does not bind (the default 0-20 dB, no transmit cap) and
one where it does (-5..0 dB and a per-round transmit deadline).

Each policy is scored by the sim at mean-rank budgets 0.5/1/2/4 (3 evaluation seeds, deterministic actions), next to
uniform LoRA at the same budget: mean episode reward, final accuracy and mean bits sent per update.

``--model minilm`` (default, 36 modules) writes the top level of the JSON (its PPO runs also ran the live check:
one live MiniLM fine-tune per allocator). Any other ``--model`` (e.g. ``smollm2``, 210 modules) needs its own live
calibration (3 probes of the whole 40-step episode, cached in ~/.cache/rankrl) and is written under its own key of
the same JSON (``{"smollm2": {"date", "machine", "config", "summary", "runs"}}``, the rest of the file kept) with
its PNG beside it (``diffusion_vs_ppo_smollm2.png``); its PPO runs skip the live check unless ``--live-check`` (two
more live SmolLM2 fine-tunes per run). The env's ``max_modules`` is raised to the model's module count if needed.

Algorithms (``--algos``): ``ppo`` (PPO alone on the per-module scores), ``diffusion`` (PPO on the coarse latent + the
DDIM refiner with AirLLM's reward weighting), ``diffusion-advantage`` (the same refiner refit with
advantage-weighted regression, ``--diffusion.weighting advantage``; fixed before it was run: temperature 1, weights
clipped at 20) and ``diffusion-advantage-noiseless`` (the same with ``--diffusion.init_noise 0``: the sampler starts
at 0, so the refined vector depends on state and latent only - added after ``diffusion_steering.py`` measured the
starting noise moving the output 12-27x more than the latent); ``coarse-linear`` (``--diffusion.decoding linear``:
PPO's latent is one weight per module-row feature and each module's score is ``tanh(standardised row . latent)``; the
refiner is never refit, so it adds nothing: PPO acting in a coarse space whose size does not grow with the model) and
``diffusion-linear`` (the same decoding with the residual DDIM refit by advantage weighting; training rollouts add
Gaussian noise of std 0.1 to the vector so the refiner sees residuals it did not make; fixed before running);
``coarse-set`` / ``diffusion-set``: the same two with the coarse PPO reading the pooled set encodings and the globals
(``--diffusion.coarse_input set``); ``<algo>-spend``: any of ``ppo``, ``coarse-linear``, ``diffusion-linear``,
``coarse-set``, ``diffusion-set`` with the env's spend entry (``--env.spend_action``: the policy also chooses how much
of the budget to spend), scored next to equal scores at constant spend entries (1, 1/2, 1/4, 1/8, 1/16 of the cap).
Rows of algorithms not in ``--algos`` are kept from the JSON when its run settings (timesteps, seeds, transmit
deadline) match, so a new algorithm can be added without rerunning the others.

Run: ``.venv/bin/python benchmarks/diffusion_vs_ppo.py [--model smollm2] [--seeds 0 1 2] [--timesteps 1024]
[--algos ...]`` (writes ``benchmarks/results/diffusion_vs_ppo.json`` + PNG).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rankrl.atomic import atomic_write_json  # noqa: E402
from rankrl.ranks.budgets import BudgetSpec  # noqa: E402
from rankrl.ranks.episodes import uniform_allocator  # noqa: E402
from rankrl.ranks.latent import train_diffusion_policy  # noqa: E402
from rankrl.ranks.policy import load_policy  # noqa: E402
from rankrl.ranks.sim import calibrate  # noqa: E402
from rankrl.ranks.train import TrainPolicyConfig, sim_budget_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REGIMES = {"bandwidth-free": {}, "bandwidth-binds": {"snr_range_db": (-5.0, 0.0)}}
#: --algos: train_policy's algo, the refiner's settings (DiffusionConfig fields) and other TrainPolicyConfig fields
_LINEAR = {"decoding": "linear", "init_noise": 0.0}
ALGOS = {"ppo": ("ppo", {}, {}), "diffusion": ("diffusion", {}, {}),
         "diffusion-advantage": ("diffusion", {"weighting": "advantage"}, {}),
         "diffusion-advantage-noiseless": ("diffusion", {"weighting": "advantage", "init_noise": 0.0}, {}),
         "coarse-linear": ("diffusion", _LINEAR, {"refit_steps": 0}),
         "diffusion-linear": ("diffusion", {**_LINEAR, "weighting": "advantage", "explore_noise": 0.1},
                              {})}  # fmt: skip
#: the same algorithms with the env's spend entry (``--env.spend_action``): the policy also decides how much of the
#: budget to spend
SPEND = "-spend"
#: coarse-set / diffusion-set: coarse-linear / diffusion-linear whose coarse PPO reads the pooled set encodings and the
#: globals (``--diffusion.coarse_input set``) instead of the flattened rows
ALGOS.update({name.replace("linear", "set"): (a, {**r, "coarse_input": "set"}, x)
              for name, (a, r, x) in list(ALGOS.items()) if name in ("coarse-linear", "diffusion-linear")})  # fmt: skip
ALGOS.update({name + SPEND: ALGOS[name] for name in ("ppo", "coarse-linear", "diffusion-linear", "coarse-set",
                                                     "diffusion-set")})  # fmt: skip


#: --sim-capacity -> calibration probes (concave: uniform r8, uniform r1, sparse, q only)
CAPACITY_PROBES = {"linear": 3, "concave": 4}


def policy_dir(model: str, regime: str, algo: str, seed: int, sim_capacity: str = "linear") -> str:
    """Where a trained policy of this benchmark is left (other benchmarks read it from there).

    >>> policy_dir("smollm2", "bandwidth-binds", "ppo", 0)
    '/tmp/dvp-smollm2-bandwidth-binds-ppo-0'
    >>> policy_dir("smollm2", "bandwidth-binds", "ppo", 0, "concave")
    '/tmp/dvp-smollm2-concave-bandwidth-binds-ppo-0'
    """
    return f"/tmp/dvp-{model}{'' if sim_capacity == 'linear' else '-' + sim_capacity}-{regime}-{algo}-{seed}"


def constant_spend(a: float):
    """Equal scores (every module the same share) and spend entry ``a``: with ``a = 0`` what every untrained
    policy here does (set policy: scores and spend near 0; linear decoding of the latent 0: scores 0)."""

    def act(obs: dict, env) -> np.ndarray:
        action = np.zeros(env.action_space.shape, np.float32)
        action[-1] = a
        return action

    return act


#: next to each -spend policy: equal shares at constant spend entries (fractions 1, 1/2, 1/4, 1/8, 1/16 of the cap)
CONSTANT_SPENDS = {f"equal-spend{a:+.1f}": constant_spend(a) for a in (1.0, 0.5, 0.0, -0.5, -1.0)}


def config_for(regime: str, algo: str, seed: int, timesteps: int, tx_cap: float | None, model: str = "minilm",
               live_check: bool = True, max_modules: int | None = None,
               sim_capacity: str = "linear") -> TrainPolicyConfig:  # fmt: skip
    """The benchmark's training config; ``sim_capacity="concave"``: 4 probes (the third sparse) and a fitted capacity
    power, policies left in ``/tmp/dvp-<model>-concave-...`` (the linear ones stay where they were)."""
    base = TrainPolicyConfig(sim_capacity=sim_capacity, probes=CAPACITY_PROBES[sim_capacity])
    name, (algo, refiner, extra) = algo, ALGOS[algo]
    base = replace(base, diffusion=replace(base.diffusion, **refiner), **extra)
    env = replace(base.env, run=replace(base.run, model=model, seed=seed, threads=2), **REGIMES[regime],
                  spend_action=name.endswith(SPEND))  # fmt: skip
    if max_modules is not None:
        env = replace(env, max_modules=max_modules)
    if regime == "bandwidth-binds":
        env = replace(env, budget=BudgetSpec(rank=4.0, tx_seconds=tx_cap))
    return replace(base, env=env, algo=algo, timesteps=timesteps, n_steps=128, wandb=False, progress=False,
                   out=policy_dir(model, regime, name, seed, sim_capacity)
                   + ("" if timesteps == 1024 else f"-{timesteps}"),
                   checkpoint_every=0,
                   live_check=live_check)  # fmt: skip


def model_entry(results: dict, model: str) -> dict:
    """The part of this benchmark's JSON that holds ``model``'s run: the top level for MiniLM, else ``results[model]``.

    >>> model_entry({"runs": [1], "smollm2": {"runs": [2]}}, "smollm2"), model_entry({"runs": [1]}, "minilm")
    ({'runs': [2]}, {'runs': [1]})
    """
    return results if model == "minilm" else results.get(model, {})


def kept_rows(path: Path, a: argparse.Namespace) -> list[dict]:
    """Rows of the algorithms not in ``a.algos`` from the model's entry of ``path``, when that entry ran the same
    timesteps, seeds and transmit deadline (else none: those algorithms are missing from the table)."""
    if not path.exists() or set(a.algos) == set(ALGOS):
        return []
    old = model_entry(json.loads(path.read_text()), a.model)
    cfg = old.get("config", {})
    if (cfg.get("timesteps"), cfg.get("seeds"), cfg.get("tx_cap"), cfg.get("sim_capacity", "linear")) != (
            a.timesteps, a.seeds, a.tx_cap, a.sim_capacity):  # fmt: skip
        print(f"note: {path} ran other settings ({cfg.get('timesteps')} steps, seeds {cfg.get('seeds')}, deadline "
              f"{cfg.get('tx_cap')}): its rows are not kept", flush=True)  # fmt: skip
        return []
    keep = [r for r in old.get("runs", []) if r["algo"] not in a.algos]
    print(f"kept {len(keep)} row(s) of {sorted({r['algo'] for r in keep})} from {path}", flush=True)
    return keep


def mean_over_budgets(table: dict, who: str, key: str) -> float:
    """Mean of ``table[budget][who][key]`` over the budgets (NaN when the table lacks ``key``)."""
    values = [row[who][key] for row in table.values() if key in row[who]]
    return float(np.mean(values)) if values else float("nan")


def write_results(path: Path, model: str, result: dict) -> None:
    """MiniLM: the top level of ``path`` (other models' keys kept); another model: ``path[model]``, the rest kept.
    Written atomically."""
    old = json.loads(path.read_text()) if path.exists() else {}
    if model == "minilm":
        new = {**{k: v for k, v in old.items() if isinstance(v, dict) and "summary" in v}, **result}
    else:
        new = {**old, model: result}
    atomic_write_json(path, new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm", help="model alias (minilm, smollm2, tiny-llama, ...)")
    ap.add_argument("--timesteps", type=int, default=1024, help="env steps per policy (PPO and diffusion alike)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tx-cap", type=float, default=0.5, help="transmit deadline (s) of the binding regime")
    ap.add_argument("--live-check", action=argparse.BooleanOptionalAction, default=None,
                    help="PPO runs end with one live fine-tune per allocator (default: on for minilm only)")
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS),
                    help="algorithms to run now; the others' rows are kept from --out when their settings match")
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES),
                    help="channel regimes to run (a partial run is best written to its own --out)")
    ap.add_argument("--sim-capacity", default="linear", choices=list(CAPACITY_PROBES),
                    help="the sim's calibration (train-policy --sim_capacity); concave: default --out "
                         "diffusion_vs_ppo_concave.json")  # fmt: skip
    ap.add_argument("--out", default=None, help="default benchmarks/results/diffusion_vs_ppo[_concave].json")
    a = ap.parse_args()
    name = "diffusion_vs_ppo" + ("" if a.sim_capacity == "linear" else "_" + a.sim_capacity)
    a.out = a.out or str(ROOT / "benchmarks" / "results" / f"{name}.json")
    if a.live_check is None:
        a.live_check = a.model == "minilm"
    from rankrl.ranks.train import train_policy

    t_start, rows = time.time(), kept_rows(Path(a.out), a)
    first = config_for("bandwidth-free", "ppo", a.seeds[0], a.timesteps, a.tx_cap, a.model, a.live_check,
                       sim_capacity=a.sim_capacity)  # fmt: skip
    t0 = time.time()
    # the same calibration for every run (it depends on the run config, the same in all of them but the seed)
    cal = calibrate(first.env, first.probes, first.probe_steps or first.run.steps, probe_evals=first.probe_evals,
                    capacity=a.sim_capacity)  # fmt: skip
    n_modules = len(cal.targets)
    max_modules = max(first.env.max_modules, n_modules)
    print(f"calibration of {a.model}/{first.run.task}: {n_modules} modules, {time.time() - t0:.0f}s; "
          f"max_modules {max_modules}", flush=True)  # fmt: skip
    for regime in a.regimes:
        for seed in a.seeds:
            for algo in a.algos:
                cfg = config_for(regime, algo, seed, a.timesteps, a.tx_cap, a.model, a.live_check, max_modules,
                                 a.sim_capacity)  # fmt: skip
                t0 = time.time()
                if ALGOS[algo][0] == "ppo":
                    train_policy(replace(cfg, env_id="rankrl/LoRARank-Sim-v1"), calibration=cal)
                    loaded = load_policy(cfg.out)

                    def act(obs, _env, policy=loaded.policy):
                        return policy.predict(obs, deterministic=True)[0]

                    table = sim_budget_table(cfg, cal, {"policy": act, "uniform": uniform_allocator})
                else:
                    summary = train_diffusion_policy(cfg, calibration=cal)
                    table = {r: {("policy" if k == "diffusion" else k): v for k, v in row.items()}
                             for r, row in summary["sim_by_budget"].items()}  # fmt: skip
                if algo.endswith(SPEND):  # the simplest rules in the same action space, on the same episodes
                    for r, row in sim_budget_table(cfg, cal, CONSTANT_SPENDS).items():
                        table[r].update(row)
                seconds = time.time() - t0
                rows.append({"regime": regime, "algo": algo, "seed": seed, "seconds": seconds, "by_budget": table})
                print(f"{regime} {algo} seed {seed}: mean reward {mean_over_budgets(table, 'policy', 'reward'):.4f} "
                      f"(uniform {mean_over_budgets(table, 'uniform', 'reward'):.4f}), bits/update "
                      f"{mean_over_budgets(table, 'policy', 'bits'):.4g} (uniform "
                      f"{mean_over_budgets(table, 'uniform', 'bits'):.4g}), {seconds:.0f}s", flush=True)  # fmt: skip
    summary = {}
    for regime in a.regimes:
        for algo in [x for x in ALGOS if any(r["algo"] == x for r in rows)]:
            runs = [r for r in rows if r["regime"] == regime and r["algo"] == algo]
            rew = [mean_over_budgets(r["by_budget"], "policy", "reward") for r in runs]

            def over_runs(who: str, key: str, runs: list = runs) -> float:
                return float(np.mean([mean_over_budgets(r["by_budget"], who, key) for r in runs]))

            summary[f"{regime}/{algo}"] = {
                "reward_mean": float(np.mean(rew)), "reward_std": float(np.std(rew)),
                "accuracy_mean": over_runs("policy", "accuracy"), "uniform_reward": over_runs("uniform", "reward"),
                "bits_mean": over_runs("policy", "bits"), "uniform_bits": over_runs("uniform", "bits"),
                "seeds": len(runs), "rewards": rew}  # fmt: skip
            if algo.endswith(SPEND):  # untrained = equal shares at spend entry 0; best constant: per budget, oracle
                summary[f"{regime}/{algo}"].update(
                    untrained_reward=over_runs("equal-spend+0.0", "reward"),
                    best_constant_reward=float(np.mean([np.mean([max(row[k]["reward"] for k in CONSTANT_SPENDS)
                                                                 for row in r["by_budget"].values()]) for r in runs])))
            base = "ppo" + SPEND if algo.endswith(SPEND) else "ppo"  # PPO alone in the same action space
            ppo = {r["seed"]: mean_over_budgets(r["by_budget"], "policy", "reward") for r in rows
                   if r["regime"] == regime and r["algo"] == base}  # fmt: skip
            if algo != base and ppo:  # paired by training seed
                diff = [x - ppo[r["seed"]] for r, x in zip(runs, rew, strict=True) if r["seed"] in ppo]
                summary[f"{regime}/{algo}"].update(minus_ppo=float(np.mean(diff)), wins_over_ppo=int(np.sum(
                    np.array(diff) > 0)), paired_seeds=len(diff))  # fmt: skip
    print(f"\n{a.model} ({n_modules} modules), {a.timesteps} env steps per policy, seeds {a.seeds}")
    print(f"{'regime/algo':<28} {'reward':>16} {'accuracy':>9} {'uniform reward':>15} {'bits/update':>12} "
          f"{'uniform bits':>12}")  # fmt: skip
    for k, s in summary.items():
        vs = f"  vs PPO {s['minus_ppo']:+.4f} ({s['wins_over_ppo']}/{s['paired_seeds']} seeds)" if "minus_ppo" in s \
            else ""
        if "untrained_reward" in s:
            vs += f"  untrained {s['untrained_reward']:.4f}, best constant spend {s['best_constant_reward']:.4f}"
        print(f"{k:<28} {s['reward_mean']:>9.4f} +- {s['reward_std']:.4f} {s['accuracy_mean']:>9.3f} "
              f"{s['uniform_reward']:>15.4f} {s['bits_mean']:>12.4g} {s['uniform_bits']:>12.4g}{vs}")
    import torch

    out = {"date": datetime.now().isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
           "config": {**vars(a), "n_modules": n_modules, "max_modules": max_modules},
           "kept_rows_of": sorted({r["algo"] for r in rows} - set(a.algos)), "summary": summary, "runs": rows,
           "seconds": time.time() - t_start}  # fmt: skip
    path = Path(a.out)
    write_results(path, a.model, out)
    png = path.with_suffix(".png") if a.model == "minilm" else path.with_name(f"{path.stem}_{a.model}.png")
    plot(summary, png, f"{a.model} ({n_modules} modules)")
    print(f"-> {path} ({'top level' if a.model == 'minilm' else repr(a.model)}), {png}")


def plot(summary: dict, png: Path, title: str = "") -> None:
    """One panel per regime: each algorithm's mean sim reward (horizontal bars, seed std) and uniform's (dots)."""
    from rankrl.plots import pyplot, save_fig

    plt = pyplot()
    regimes = list(dict.fromkeys(k.split("/")[0] for k in summary))
    algos = [a for a in ALGOS if any(k.split("/")[1] == a for k in summary)]
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.2 * len(regimes), 0.32 * len(algos) + 1.4), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=True):
        keys = [f"{regime}/{a}" for a in algos if f"{regime}/{a}" in summary]
        y = np.arange(len(keys))
        ax.barh(y, [summary[k]["reward_mean"] for k in keys], xerr=[summary[k]["reward_std"] for k in keys],
                color=[f"C{list(ALGOS).index(k.split('/')[1]) % 10}" for k in keys])  # fmt: skip
        ax.scatter([summary[k]["uniform_reward"] for k in keys], y, color="k", zorder=3, s=12, label="uniform")
        ax.set_yticks(y, [k.split("/")[1] for k in keys], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("mean sim reward over budgets 0.5-4", fontsize=8)
        ax.set_title(f"{title}, {regime}" if title else regime, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_fig(fig, png)


if __name__ == "__main__":
    main()

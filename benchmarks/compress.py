"""Inference-rank allocation (DR-RL) benchmark: factorize the attention projections (q, k, v, o) of SmolLM2-135M and
MiniLM-L6 at 30 / 50 / 70% of their dense FLOPs with every rule and the learned policy, at equal counted FLOPs.

* Quality: SmolLM2 perplexity on held-out text (GSM8K questions + answers from ``../shared/data/gsm8k`` when
  present, else the embedded default task's text); MiniLM cosine of its mean-pooled embeddings to the dense
  model's (its sentence-embedding use). Both on the env's held-out batches.
* Methods: uniform rank, energy threshold (same kept spectral energy everywhere), greedy energy per FLOP on the
  plain SVD, greedy on the activation-aware (ASVD) spectra, random shares, and the PPO set policy (trained live on
  MiniLM, applied to SmolLM2 unchanged - and trained on SmolLM2, applied to MiniLM).
* Cost: counted linear FLOPs per token and measured latency per token at batch 1 and 8 (dense vs factorized,
  median of repeats) for the largest reduction, and the ratio between the two speed-ups.

Run: ``.venv/bin/python benchmarks/compress.py`` (writes ``benchmarks/results/compress.json`` + ``.png``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rankrl.compress import allocate as A  # noqa: E402
from rankrl.compress.env import AttentionRankConfig, AttentionRankEnv  # noqa: E402
from rankrl.compress.factorize import Spectra  # noqa: E402
from rankrl.compress.job import linear_flops  # noqa: E402
from rankrl.compress.measure import latency_per_token  # noqa: E402
from rankrl.compress.policy import CompressPolicyConfig, policy_ranks, train_compress_policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
BUDGETS = (0.3, 0.5, 0.7)
RULES = ("uniform", "energy", "greedy", "greedy-asvd", "random")


def make_env(model: str, eval_batches: int) -> AttentionRankEnv:
    texts = str(GSM8K) if model == "smollm2" and GSM8K.exists() else "default"
    return AttentionRankEnv(AttentionRankConfig(model=model, texts=texts, eval_batches=eval_batches, batch_size=8,
                                                max_length=64, budget_range=(0.25, 0.75)))  # fmt: skip


def rule_ranks(env: AttentionRankEnv, rule: str, plain: list) -> dict[str, int]:
    b = env.budget
    return {"uniform": lambda: A.uniform(env.modules, b), "energy": lambda: A.energy_threshold(env.modules, b),
            "greedy": lambda: A.greedy_energy(plain, b), "greedy-asvd": lambda: A.greedy_energy(env.modules, b),
            "random": lambda: A.random_shares(env.modules, b, 0)}[rule]()  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timesteps", type=int, default=384, help="PPO decisions per policy")
    ap.add_argument("--eval-batches", type=int, default=2, help="held-out batches of 8 x 64 tokens per decision")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compress.json"))
    ap.add_argument("--heldout-only", action="store_true",
                    help="only (re)score every method on held-out text with the policies of an earlier run (/tmp)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.heldout_only:
        out = json.loads(Path(a.out).read_text())
        out["heldout_text"] = heldout(a.eval_batches)
        Path(a.out).write_text(json.dumps(out, indent=1, default=str))
        print(f"-> {a.out}")
        return
    t_start = time.time()
    envs = {m: make_env(m, a.eval_batches) for m in ("minilm", "smollm2")}
    policies, training = {}, {}
    for m, env in envs.items():
        t0 = time.time()
        cfg = CompressPolicyConfig(env=env.config, timesteps=a.timesteps, n_steps=32, out=f"/tmp/bench-compress-{m}",
                                   wandb=False)  # fmt: skip
        policies[m], rows = train_compress_policy(cfg, env)
        training[m] = {"seconds": time.time() - t0, "reward_first_rollout": rows[0]["rollout/ep_reward"],
                       "reward_last_rollout": rows[-1]["rollout/ep_reward"], "timesteps": a.timesteps}  # fmt: skip
        print(f"policy trained on {m}: {training[m]}", flush=True)
    results = {}
    for m, env in envs.items():
        other = "smollm2" if m == "minilm" else "minilm"
        plain = [A.Module.from_svd(s) for s in Spectra(env.model, [x.name for x in env.modules]).svds.values()]
        rows = {}
        for b in BUDGETS:
            env.reset(options={"budget": b})
            cell = {}
            for rule in RULES:
                cell[rule] = env.step_ranks(rule_ranks(env, rule, plain))[4]
            cell["policy (trained here)"] = env.step_ranks(policy_ranks(policies[m], env, b))[4]
            cell[f"policy (transfer from {other})"] = env.step_ranks(policy_ranks(policies[other], env, b))[4]
            rows[b] = {k: {kk: v[kk] for kk in ("reward", "flops_fraction", *env.dense_quality, "ranks")}
                       for k, v in cell.items()}  # fmt: skip
            metric = "perplexity" if env.quality == "perplexity" else "embedding_cosine"
            print(f"{m} @ {b:.0%}: " + ", ".join(f"{k} {v[metric]:.4f}" for k, v in rows[b].items()), flush=True)
        # measured vs counted speed-up at the largest reduction, greedy-asvd ranks
        env.reset(options={"budget": BUDGETS[0]})
        small = env.spectra.factorize(env.model, rule_ranks(env, "greedy-asvd", plain))
        speed = {"counted_linear_speedup": linear_flops(env.model) / linear_flops(small)}
        vocab = int(getattr(env.model.config, "vocab_size", 100))
        for bs in (1, 8):
            d = latency_per_token(env.model, bs, 64, vocab=vocab, repeats=7)
            s = latency_per_token(small, bs, 64, vocab=vocab, repeats=7)
            speed[f"measured_speedup_b{bs}"] = d / s
            speed[f"latency_ms_per_token_b{bs}"] = {"dense": d * 1e3, "factorized": s * 1e3}
        results[m] = {"quality": env.quality, "dense": env.dense_quality, "modules": len(env.modules), "budgets": rows,
                      "speed_at_30pct": speed}  # fmt: skip
        print(f"{m} speed at 30%: {speed}", flush=True)
    out = {"date": datetime.now().isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__},
           "config": vars(a), "training": training, "results": results, "seconds": time.time() - t_start}  # fmt: skip
    Path(a.out).write_text(json.dumps(out, indent=1, default=str))
    plot(out, Path(a.out).with_suffix(".png"))
    print(f"-> {a.out}")


#: text no decision of the benchmark was trained or scored on: the policies' rewards came from the env's texts
HELDOUT_TEXT = {"minilm": str(ROOT.parent / "shared" / "data" / "sst2"), "smollm2": "default"}


def heldout(eval_batches: int) -> dict:
    """Every rule and both policies (from the earlier run's /tmp folders) scored on text the policies never saw."""
    from rankrl.compress.policy import load_compress_policy

    policies = {m: load_compress_policy(f"/tmp/bench-compress-{m}").policy for m in ("minilm", "smollm2")}
    res = {}
    for m, text in HELDOUT_TEXT.items():
        if not Path(text).exists() and text != "default":
            res[m] = {"skipped": f"{text} is absent"}
            continue
        env = AttentionRankEnv(AttentionRankConfig(model=m, texts=text, eval_batches=eval_batches, batch_size=8,
                                                   max_length=64))  # fmt: skip
        other = "smollm2" if m == "minilm" else "minilm"
        plain = [A.Module.from_svd(s) for s in Spectra(env.model, [x.name for x in env.modules]).svds.values()]
        metric = "perplexity" if env.quality == "perplexity" else "embedding_cosine"
        rows = {"text": text, "metric": metric, "dense": env.dense_quality}
        for b in BUDGETS:
            env.reset(options={"budget": b})
            cell = {rule: env.step_ranks(rule_ranks(env, rule, plain))[4][metric] for rule in RULES}
            cell["policy (trained here)"] = env.step_ranks(policy_ranks(policies[m], env, b))[4][metric]
            cell[f"policy (transfer from {other})"] = env.step_ranks(policy_ranks(policies[other], env, b))[4][metric]
            rows[str(b)] = cell
            print(f"held-out {m} @ {b:.0%}: " + ", ".join(f"{k} {v:.4f}" for k, v in cell.items()), flush=True)
        res[m] = rows
    return res


def plot(out: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rankrl.plots import save_fig

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (m, r) in zip(axes, out["results"].items(), strict=True):
        metric = "perplexity" if r["quality"] == "perplexity" else "embedding_cosine"
        budgets = sorted(r["budgets"], key=float)
        for method in r["budgets"][budgets[0]]:
            ax.plot([float(b) for b in budgets], [r["budgets"][b][method][metric] for b in budgets], marker="o",
                    label=method)  # fmt: skip
        ax.set_xlabel("budget (fraction of dense attention-projection FLOPs)")
        ax.set_ylabel(metric + (" (lower is better)" if metric == "perplexity" else " (higher is better)"))
        ax.set_title(m)
        if metric == "perplexity":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_fig(fig, png)


if __name__ == "__main__":
    main()

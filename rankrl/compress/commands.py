"""``rankrl compress [train-policy]``: inference-rank allocation (DR-RL), dispatched by ``rankrl.cli``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rankrl.args import parse_config


def cmd_compress(argv: Sequence[str]) -> int:
    """``rankrl compress ...`` factorizes a model under a FLOP budget; ``rankrl compress train-policy ...`` trains
    the inference-rank policy on the live AttentionRank env."""
    argv = list(argv)
    if argv and argv[0] == "train-policy":
        from rankrl.compress.policy import CompressPolicyConfig, train_compress_policy

        config = parse_config(CompressPolicyConfig, argv[1:], prog="rankrl compress train-policy")
        _, rows = train_compress_policy(config)
        first, last = rows[0]["rollout/ep_reward"], rows[-1]["rollout/ep_reward"]
        print(f"trained {config.timesteps} decisions on {config.env.model}: mean reward {first:.4f} -> {last:.4f}; "
              f"policy -> {config.out}")  # fmt: skip
        return 0
    from rankrl.compress.job import CompressArgs, compress

    args = parse_config(CompressArgs, argv, prog="rankrl compress")
    try:
        r = compress(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"rankrl compress: {e}", file=sys.stderr)
        return 2
    q = ("perplexity", r["dense_perplexity"], r["perplexity"]) if r["quality"] == "perplexity" else \
        ("embedding cosine", 1.0, r["embedding_cosine"])  # fmt: skip
    print(f"{r['model']}: {args.method} ranks at {args.budget:.0%} of the projection FLOPs "
          f"({r['flops_fraction']:.3f} used), {len(r['ranks'])} projections")
    print(f"  {q[0]:<24} dense {q[1]:.4f} -> {q[2]:.4f}")
    print(f"  {'linear FLOPs/token':<24} dense {r['linear_flops_dense']:,} -> {r['linear_flops']:,} "
          f"(counted speed-up {r['counted_speedup']:.2f}x)")
    for k, v in r.items():
        if k.startswith("latency_per_token_b"):
            print(f"  {'latency/token, batch ' + k.rsplit('b', 1)[1]:<24} dense {v['dense'] * 1e3:.3f} ms -> "
                  f"{v['compressed'] * 1e3:.3f} ms (measured speed-up {v['speedup']:.2f}x)")
    print(f"  {'weights':<24} dense {r['weight_bytes_dense'] / 2**20:.1f} MiB -> {r['weight_bytes'] / 2**20:.1f} MiB")
    print(f"model.safetensors, compress.json, ranks.csv, ranks.png -> {args.out}")
    return 0

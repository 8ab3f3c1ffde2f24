"""``rankrl compress``: factorize a model's projections under a FLOP budget (a rule or a trained policy picks the
ranks), write the smaller model, its rank table + PNG, and a report of what was kept and what it really costs.

The output folder holds ``model.safetensors`` (the factorized state dict) and ``compress.json`` (model, ranks,
method, budget, measurements); :func:`load_compressed` rebuilds the model with plain transformers plus
:class:`~rankrl.compress.factorize.LowRankLinear` and loads the weights - nothing in the folder runs code.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rankrl.compress.env import AttentionRankConfig

__all__ = ["METHODS", "CompressArgs", "compress", "linear_flops", "load_compressed"]

METHODS: tuple[str, ...] = ("uniform", "energy", "greedy", "greedy-asvd", "random", "policy")
MODEL_FILE, META_FILE = "model.safetensors", "compress.json"


@dataclass(frozen=True)
class CompressArgs:
    """Factorize the projections of ``--env.model`` at ``--budget`` of their dense FLOPs; save and measure it."""

    env: AttentionRankConfig = field(default_factory=AttentionRankConfig)
    """the model, projection kinds, activation-aware SVD, text and quality measure (``--env.model`` ...)"""
    budget: float = 0.5
    """FLOP budget: a fraction of the dense FLOPs of the factorized projections"""
    method: str = "greedy-asvd"
    """how ranks are picked: uniform, energy (same kept energy everywhere), greedy (energy per FLOP),
    greedy-asvd (activation-weighted energy per FLOP), random, policy (needs --policy)"""
    policy: str | None = None
    """a trained inference-rank policy directory (`rankrl compress train-policy`)"""
    latency_batches: tuple[int, ...] = (1, 8)
    """batch sizes of the latency measurement"""
    latency_seq: int = 64
    """tokens per row in the latency measurement"""
    out: str = "runs/compress"
    """output directory: model.safetensors, compress.json, ranks.csv, ranks.png"""
    seed: int = 0
    """seed of the random method"""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if (self.method == "policy") != (self.policy is not None):
            raise ValueError("--method policy and --policy DIR go together")
        if not 0 < self.budget <= 1:
            raise ValueError(f"--budget must be in (0, 1], got {self.budget}")
        if self.method == "greedy-asvd" and not self.env.activation_aware:
            raise ValueError("--method greedy-asvd needs --env.activation_aware (the default)")


def linear_flops(model: Any) -> int:
    """Counted FLOPs per token of every linear map of ``model`` (dense and factorized): the model's matmul cost
    apart from the attention scores."""
    import torch

    from rankrl.compress.factorize import LowRankLinear

    total, inside = 0, set()
    for m in model.modules():
        if isinstance(m, LowRankLinear):
            total += 2 * m.rank * (m.in_features + m.out_features)
            inside |= {id(m.first), id(m.second)}
        elif isinstance(m, torch.nn.Linear) and id(m) not in inside:
            total += 2 * m.in_features * m.out_features
    return total


def choose_ranks(env: Any, args: CompressArgs) -> dict[str, int]:
    """The ranks ``args.method`` picks for ``env``'s model at ``args.budget``."""
    from rankrl.compress import allocate as A

    env.reset(options={"budget": args.budget})
    mods, budget = env.modules, env.budget
    if args.method == "uniform":
        return A.uniform(mods, budget)
    if args.method == "energy":
        return A.energy_threshold(mods, budget)
    if args.method == "random":
        return A.random_shares(mods, budget, args.seed)
    if args.method in ("greedy", "greedy-asvd"):
        if args.method == "greedy" and env.scales is not None:  # plain spectra: an unscaled SVD of each weight
            from rankrl.compress.factorize import Spectra

            plain = Spectra(env.model, [m.name for m in mods])
            mods = [A.Module.from_svd(plain.svds[m.name]) for m in mods]
        return A.greedy_energy(mods, budget)
    from rankrl.compress.policy import load_compress_policy, policy_ranks

    return policy_ranks(load_compress_policy(args.policy).policy, env, args.budget)


def _ranks_png(env: Any, ranks: dict[str, int], out: Path, title: str) -> Path:
    import numpy as np

    from rankrl.plots import annotated_heatmap

    kinds = [k for k in env.config.kinds if any(t.kind == k for t in env.targets)]
    layers = max(t.layer_index for t in env.targets) + 1
    grid = np.full((layers, len(kinds)), np.nan)
    for t in env.targets:
        grid[t.layer_index, kinds.index(t.kind)] = ranks[t.name]
    return annotated_heatmap(grid, [f"layer {i}" for i in range(layers)], kinds, out, title=title)


def compress(args: CompressArgs, env: Any = None) -> dict[str, Any]:
    """Everything ``rankrl compress`` does; returns the report it writes to ``compress.json``."""
    from safetensors.torch import save_file

    from rankrl.atomic import atomic_write, atomic_write_json, atomic_write_text
    from rankrl.compress.env import AttentionRankEnv
    from rankrl.compress.measure import latency_per_token, peak_forward_bytes, weight_bytes

    t0 = time.time()
    env = env or AttentionRankEnv(args.env)
    ranks = choose_ranks(env, args)
    quality = env.evaluate(ranks)
    small = env.spectra.factorize(env.model, ranks)
    vocab = int(getattr(env.model.config, "vocab_size", 100))
    report: dict[str, Any] = {"model": env.config.model, "kinds": list(env.config.kinds), "method": args.method,
                              "quality": env.quality,
                              "budget": args.budget, "ranks": ranks, **quality}  # fmt: skip
    report.update(linear_flops_dense=linear_flops(env.model), linear_flops=linear_flops(small),
                  weight_bytes_dense=weight_bytes(env.model), weight_bytes=weight_bytes(small))
    report["counted_speedup"] = report["linear_flops_dense"] / report["linear_flops"]
    for bs in args.latency_batches:
        dense_t = latency_per_token(env.model, bs, args.latency_seq, vocab=vocab)
        small_t = latency_per_token(small, bs, args.latency_seq, vocab=vocab)
        report[f"latency_per_token_b{bs}"] = {"dense": dense_t, "compressed": small_t, "speedup": dense_t / small_t}
    report["peak_forward_bytes"] = {"dense": peak_forward_bytes(env.model, 1, args.latency_seq, vocab=vocab),
                                    "compressed": peak_forward_bytes(small, 1, args.latency_seq, vocab=vocab)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in small.state_dict().items()}
    atomic_write(out / MODEL_FILE, lambda p: save_file(state, str(p), metadata={"format": "rankrl-compressed"}),
                 ".safetensors")  # fmt: skip
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["module", "kind", "layer", "in", "out", "rank", "break_even", "energy_kept"])
    for t in env.targets:
        svd = env.spectra.svds[t.name]
        w.writerow([t.name, t.kind, t.layer_index, t.in_features, t.out_features, ranks[t.name], svd.break_even_rank,
                    f"{svd.energy_kept(ranks[t.name]):.4f}"])  # fmt: skip
    atomic_write_text(out / "ranks.csv", buf.getvalue())
    _ranks_png(env, ranks, out / "ranks.png", f"{env.config.model}: {args.method} at {args.budget:.0%} of the "
               f"projection FLOPs")  # fmt: skip
    report["seconds"] = time.time() - t0
    report["config"] = asdict(args)
    atomic_write_json(out / META_FILE, report)
    return report


def load_compressed(path: str | os.PathLike) -> Any:
    """The factorized model a ``rankrl compress`` folder holds: the base model (by its recorded name) with every
    recorded module replaced by a :class:`LowRankLinear` of its rank, then the saved weights (strict)."""
    from safetensors.torch import load_file

    from rankrl.compress.factorize import LowRankLinear, break_even_rank, swap_module
    from rankrl.models import load_model

    folder = Path(path)
    if not (folder / META_FILE).is_file() or not (folder / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{folder}: expected {META_FILE} and {MODEL_FILE} (written by `rankrl compress`)")
    meta = json.loads((folder / META_FILE).read_text())
    kind = "classification" if meta["quality"] == "embedding" else "causal_lm"
    model = load_model(meta["model"], task_kind=kind, seed=meta["config"]["env"]["seed"]).model
    for name, r in meta["ranks"].items():
        dense = model.get_submodule(name)
        if int(r) <= break_even_rank(dense.in_features, dense.out_features):  # the rule Spectra.factorize used
            swap_module(model, name, LowRankLinear(dense.in_features, dense.out_features, int(r),
                                                   bias=dense.bias is not None, dtype=dense.weight.dtype))  # fmt: skip
    model.load_state_dict(load_file(str(folder / MODEL_FILE)), strict=True)
    return model.eval()

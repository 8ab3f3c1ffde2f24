"""Does PPO's coarse latent steer the DDIM refiner? A check on the trained refiners of ``diffusion_vs_ppo.py``.

For each trained ``--algo diffusion`` policy folder that benchmark left (``/tmp/dvp-<model>-<regime>-diffusion-
<weighting>-<seed>``; run it first), on states from the policy's own replay buffer (its last checkpoint):

* ``latent``: spread of the refined per-module scores over 8 random coarse latents (uniform in [-1, 1]^16; same
  state, same DDIM seed) - what PPO's action can change;
* ``seed``: spread over 8 DDIM sampling seeds (same state, the buffer entry's latent) - the sampler's own noise;
* ``state``: spread over 8 different buffer states (same latent, same seed) - what the state changes.

Spread = standard deviation over the 8 samples, averaged over the real module rows, then over 4 base states. If the
latent's spread is not well above the seed's, PPO has little control over the allocation the refiner emits.

Run: ``.venv/bin/python benchmarks/diffusion_steering.py`` (seconds; writes
``benchmarks/results/diffusion_steering.json``).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.rank_policy_trec import header  # noqa: E402
from rankrl.atomic import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K, BASES = 8, 4


def spreads(folder: Path, rng: np.random.Generator) -> dict[str, float]:
    from safetensors.torch import load_file

    from rankrl.ranks.policy import load_policy

    refiner = load_policy(folder).policy.refiner
    buf = load_file(str(folder / "checkpoint_buffer.safetensors"))
    n = buf["mask"].shape[0]
    idx = rng.choice(n, size=BASES + K, replace=False)

    def obs(i: int) -> dict[str, np.ndarray]:
        return {k: buf[k][i].numpy() for k in ("rows", "mask", "globals")}

    def spread(samples: list[np.ndarray], mask: np.ndarray) -> float:
        return float(np.std(np.stack(samples), axis=0)[mask > 0].mean())

    out: dict[str, list[float]] = {"latent": [], "seed": [], "state": []}
    dim = buf["latent"].shape[1]
    for b in idx[:BASES]:
        o, z = obs(b), buf["latent"][b].numpy()
        out["latent"].append(spread([refiner.predict_action(o, rng.uniform(-1, 1, dim), seed=0) for _ in range(K)],
                                    o["mask"]))  # fmt: skip
        out["seed"].append(spread([refiner.predict_action(o, z, seed=s) for s in range(1, K + 1)], o["mask"]))
        out["state"].append(spread([refiner.predict_action(obs(i), z, seed=0) for i in idx[BASES:]], o["mask"]))
    return {k: float(np.mean(v)) for k, v in out.items()}


def main() -> None:
    t0 = time.time()
    folders = sorted(p for p in Path("/tmp").glob("dvp-*-diffusion-*") if (p / "policy.json").exists())
    if not folders:
        sys.exit("no trained diffusion policies under /tmp/dvp-*: run benchmarks/diffusion_vs_ppo.py first")
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'policy':<60} {'latent':>7} {'seed':>7} {'state':>7}  latent / seed")
    for f in folders:
        # dvp-<model>-<regime>-diffusion[-<weighting>]-<seed> (runs from before --algos have no weighting: reward)
        m = re.match(r"dvp-(\w+)-(bandwidth-\w+)-diffusion(?:-([\w-]+?))?-(\d+)$", f.name)
        decoding = json.loads((f / "policy.json").read_text())["diffusion"]["config"].get("decoding", "none")
        if not m or decoding != "none":
            continue  # the question is about AirLLM's decoding; the linear one's latent is the decoding itself
        s = spreads(f, rng)
        rows.append({"model": m[1], "regime": m[2], "weighting": m[3] or "reward", "seed": int(m[4]), **s})
        ratio = f"{s['latent'] / s['seed']:.2f}" if s["seed"] > 0 else "- (no starting noise)"
        print(f"{f.name:<60} {s['latent']:>7.4f} {s['seed']:>7.4f} {s['state']:>7.4f}  {ratio}")
    summary = {}
    for key in sorted({(r["model"], r["regime"], r["weighting"]) for r in rows}):
        rs = [r for r in rows if (r["model"], r["regime"], r["weighting"]) == key]
        summary["/".join(key)] = {k: float(np.mean([r[k] for r in rs])) for k in ("latent", "seed", "state")}
    out = ROOT / "benchmarks" / "results" / "diffusion_steering.json"
    atomic_write_json(out, {**header(t0), "samples": K, "base_states": BASES, "summary": summary, "rows": rows})
    print(f"-> {out}")


if __name__ == "__main__":
    main()

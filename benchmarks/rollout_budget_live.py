"""Live rollout budgets: uniform vs Knapsack RL (vs a learned allocator) at equal total rollouts, in real GRPO runs
through :class:`rankrl.rollouts.grpo.RolloutGRPOTrainer`.

1. tiny-qwen on the embedded arithmetic task, after a short supervised warm-up so that success rates are mixed
   (a random model never answers, a trained one always does: neither has anything to allocate);
2. SmolLM2-135M-Instruct on ../shared/data/gsm8k for a handful of steps (skipped when absent).

Prompts are limited to a small pool so each prompt is seen many times and has a reward history (Knapsack RL
allocates from that history). Prints a table and writes ``benchmarks/results/rollout_budget_live.json``.

    python benchmarks/rollout_budget_live.py                 # both parts (~10 min on 2 CPU cores)
    python benchmarks/rollout_budget_live.py --skip-smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def warm_up_tiny(steps: int, seed: int, out: Path) -> Path:
    """Supervised warm-up of tiny-qwen on arith (full fine-tune, plain loop), saved once."""
    from rankrl.models import load_model
    from rankrl.tasks import load_task

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    lm = load_model("tiny-qwen", task_kind="causal_lm", seed=seed)
    model, tok = lm.model, lm.tokenizer
    rows = load_task("arith").splits["train"]
    enc = tok([r.text + r.target + tok.eos_token for r in rows], padding=True, return_tensors="pt")
    labels = enc["input_ids"].clone()
    labels[enc["attention_mask"] == 0] = -100
    for i, r in enumerate(rows):
        labels[i, : len(tok(r.text)["input_ids"])] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(rows), (64,), generator=g)
        model(
            input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx], labels=labels[idx]
        ).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def grpo_run(model_path: str, dataset, allocator, *, steps: int, prompts_per_round: int, rollouts: int,
             max_completion_length: int, seed: int, lr: float) -> dict:  # fmt: skip
    """One GRPO run; returns per-step grpo/* metrics and rewards."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import GRPOConfig

    from rankrl.rewards import numeric_answer_reward
    from rankrl.rollouts.grpo import RolloutGRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(output_dir=tmp, max_steps=steps, per_device_train_batch_size=prompts_per_round * rollouts,
                            num_generations=rollouts, max_completion_length=max_completion_length, temperature=1.0,
                            learning_rate=lr, seed=seed, use_cpu=True, bf16=False, report_to="none", logging_steps=1,
                            save_strategy="no", gradient_checkpointing=False, disable_tqdm=True)  # fmt: skip
        trainer = RolloutGRPOTrainer(model=model, processing_class=tok, reward_funcs=numeric_answer_reward, args=config,
                                    train_dataset=dataset, allocator=allocator)  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # one table at the end instead of a dict per step
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    logs = [r for r in trainer.state.log_history if "grpo/effective_rollout_ratio" in r]
    pick = {k: [r[k] for r in logs] for k in ("reward", "grpo/effective_rollout_ratio", "grpo/frac_nonzero_groups",
                                              "grpo/rollouts_per_prompt_max")}  # fmt: skip
    return {"seconds": seconds, **pick}


def dataset_from(task_rows, n_prompts: int, chat: bool):
    from datasets import Dataset

    rows = task_rows[:n_prompts]
    suffix = "\nSolve the problem. End your answer with '#### <number>'."
    prompts = [[{"role": "user", "content": r.text + suffix}] if chat else r.text for r in rows]
    return Dataset.from_dict({"prompt": prompts, "target": [r.target for r in rows],
                              "prompt_id": [str(i) for i in range(len(rows))]})  # fmt: skip


def summarise(runs: list[dict], skip: int) -> dict:
    """Mean +- std over seeds of each run's mean after the first ``skip`` steps (histories warm up first)."""
    out = {}
    for key in ("reward", "grpo/effective_rollout_ratio", "grpo/frac_nonzero_groups", "grpo/rollouts_per_prompt_max"):
        per_run = [float(np.mean(r[key][skip:])) for r in runs if r[key][skip:]]
        out[key] = (float(np.mean(per_run)), float(np.std(per_run)))
    out["seconds"] = float(np.mean([r["seconds"] for r in runs]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tiny-steps", type=int, default=200)
    ap.add_argument("--tiny-prompts", type=int, default=32, help="prompt pool (each seen every pool/round steps)")
    ap.add_argument("--warmup-steps", type=int, default=1500)
    ap.add_argument("--smollm2-steps", type=int, default=6)
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--allocator-dir", default=None, help="a trained allocator (rankrl.rollouts.allocator)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))

    from rankrl.models import cache_dir, load_model
    from rankrl.rollouts.grpo import knapsack_allocator, uniform_allocator
    from rankrl.tasks import load_task

    allocators = {"uniform": uniform_allocator, "knapsack": knapsack_allocator(n_min=2, n_max=32)}
    if a.allocator_dir:
        from rankrl.rollouts.allocator import trainer_allocator

        allocators["learned"] = trainer_allocator(a.allocator_dir)
    results: dict = {"benchmark": "rollout_budget_live", "date": datetime.now().isoformat(),
                     "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                                 "threads": torch.get_num_threads()}, "parts": {}}  # fmt: skip

    tiny = warm_up_tiny(a.warmup_steps, 0, cache_dir() / f"tiny-qwen-arith-sft-{a.warmup_steps}")
    data = dataset_from(load_task("arith").splits["train"], a.tiny_prompts, chat=False)
    part = {"config": {"model": "tiny-qwen + arith warm-up", "warmup_steps": a.warmup_steps, "steps": a.tiny_steps,
                       "prompts_pool": a.tiny_prompts, "prompts_per_round": 4, "rollouts_per_prompt": 8,
                       "seeds": a.seeds, "summary_skips_first_steps": a.tiny_steps // 4},
            "runs": {}, "summary": {}}  # fmt: skip
    for name, alloc in allocators.items():
        runs = [grpo_run(str(tiny), data, alloc, steps=a.tiny_steps, prompts_per_round=4, rollouts=8,
                         max_completion_length=6, seed=s, lr=1e-4) for s in range(a.seeds)]  # fmt: skip
        part["runs"][name] = runs
        part["summary"][name] = summarise(runs, skip=a.tiny_steps // 4)
        print(f"tiny {name}: {part['summary'][name]}", flush=True)
    results["parts"]["tiny_arith"] = part

    gsm = SHARED / "gsm8k"
    if not a.skip_smollm2 and gsm.exists():
        load_model("smollm2", task_kind="causal_lm")  # converts + caches the GGUF once
        path = str(cache_dir() / "smollm2-135m-instruct")
        data = dataset_from(load_task(str(gsm)).splits["train"], 8, chat=True)
        part = {"config": {"model": "smollm2", "steps": a.smollm2_steps, "prompts_pool": 8, "prompts_per_round": 2,
                           "rollouts_per_prompt": 8, "max_completion_length": 96, "seeds": 1}, "runs": {},
                "summary": {}}  # fmt: skip
        for name in ("uniform", "knapsack"):
            runs = [grpo_run(path, data, allocators[name], steps=a.smollm2_steps, prompts_per_round=2, rollouts=8,
                             max_completion_length=96, seed=0, lr=1e-6)]  # fmt: skip
            part["runs"][name] = runs
            part["summary"][name] = summarise(runs, skip=0)
            print(f"smollm2 {name}: {part['summary'][name]}", flush=True)
        results["parts"]["smollm2_gsm8k"] = part

    out = RESULTS / "rollout_budget_live.json"
    if out.exists():  # keep parts measured by an earlier invocation (e.g. --skip-smollm2 reruns the tiny part only)
        earlier = json.loads(out.read_text()).get("parts", {})
        results["parts"] = {**earlier, **results["parts"]}
    print(f"\n{'part':<16}{'allocator':<10}{'eff. rollout ratio':>22}{'nonzero groups':>18}{'reward':>16}{'max N':>8}")
    for pname, part in results["parts"].items():
        for name, s in part["summary"].items():
            e, z, r, m = (s[k] for k in ("grpo/effective_rollout_ratio", "grpo/frac_nonzero_groups", "reward",
                                         "grpo/rollouts_per_prompt_max"))  # fmt: skip
            print(f"{pname:<16}{name:<10}{e[0]:>14.3f} +- {e[1]:.3f}{z[0]:>10.3f} +- {z[1]:.3f}"
                  f"{r[0]:>9.3f} +- {r[1]:.3f}{m[0]:>8.1f}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""``rankrl rollouts train | train-allocator``: GRPO rollout budgets (dispatched by ``rankrl.cli``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from rankrl.args import parse_config

ROLLOUTS_USAGE = """usage: rankrl rollouts {train,train-allocator,convert-allocator} [--help] [options]

  train              GRPO, each prompt getting the rollouts an allocator gives it (Knapsack RL);
                     every GRPOConfig flag works; --resume_from_checkpoint DIR|true continues a run
  train-allocator    train a PPO allocator on the RolloutBudget-Sim env (for --allocator DIR)
  convert-allocator  rewrite an old pickled allocator (model.zip) you trust as safetensors + JSON (--trust)"""


def cmd_rollouts(argv: Sequence[str]) -> int:
    """``rankrl rollouts train ...``: GRPO with per-prompt rollout budgets (every GRPOConfig flag works)."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(ROLLOUTS_USAGE)
        return 0
    if argv[0] == "train-allocator":
        return cmd_train_allocator(argv[1:])
    if argv[0] == "convert-allocator":
        return cmd_convert_allocator(argv[1:])
    if argv[0] != "train":
        print(f"rankrl rollouts: unknown subcommand {argv[0]!r}; use 'train', 'train-allocator' or "
              "'convert-allocator'", file=sys.stderr)  # fmt: skip
        return 2
    from trl import GRPOConfig, TrlParser

    from rankrl.args import flag_value, passed, with_grpo_defaults
    from rankrl.rollouts.job import RolloutsArgs, run_rollouts_train

    rest = argv[1:]
    if "-h" in rest or "--help" in rest:
        TrlParser((RolloutsArgs, GRPOConfig), prog="rankrl rollouts train").parse_args(["--help"])
    parser = TrlParser((RolloutsArgs, GRPOConfig), prog="rankrl rollouts train")
    # TRL validates num_generations while parsing: start it at --rollouts_per_prompt, which it is set to anyway
    groups = flag_value(rest, "--rollouts_per_prompt") or str(RolloutsArgs.rollouts_per_prompt)
    defaults = {"--output_dir": "runs/rollouts", "--num_generations": groups}
    args, config = parser.parse_args_and_config(with_grpo_defaults(rest, defaults))
    if passed(rest, "--num_generations"):
        from rankrl.resume import check_num_generations

        check_num_generations(config.num_generations, args.rollouts_per_prompt, "--rollouts_per_prompt",
                              "rankrl rollouts train")
    return run_rollouts_train(args, config, make_allocator(args))


@dataclass(frozen=True)
class TrainAllocatorArgs:
    """Train the learned rollout allocator (SB3 PPO, one head shared by all prompts) on RolloutBudget-Sim-v0."""

    out: str = "runs/allocator"
    """directory for policy.safetensors + policy.json + env_config.json (for `rankrl rollouts train --allocator`)"""
    timesteps: int = 20_000
    """PPO env steps (GRPO rounds) summed over the training envs"""
    difficulty: tuple[str, ...] = ("hard", "mixed", "bimodal")
    """sim difficulty mixes to train on (one env each, x history lengths)"""
    history_rounds: tuple[int, ...] = (1, 3)
    """warm-start history lengths to train on"""
    prompts_per_round: int = 16
    """prompts per GRPO round"""
    rollouts_per_prompt: int = 8
    """average rollouts per prompt"""
    n_min: int = 2
    """fewest rollouts per prompt"""
    n_max: int = 32
    """most rollouts per prompt"""
    seed: int = 0
    """PPO / env seed"""


def cmd_train_allocator(argv: Sequence[str]) -> int:
    a = parse_config(TrainAllocatorArgs, list(argv), prog="rankrl rollouts train-allocator")
    from rankrl.rollouts.allocator import save_allocator, train_allocator

    base = dict(prompts_per_round=a.prompts_per_round, rollouts_per_prompt=a.rollouts_per_prompt, n_min=a.n_min,
                n_max=a.n_max)  # fmt: skip
    members = [dict(base, difficulty=d, history_rounds=h) for d in a.difficulty for h in a.history_rounds]
    model = train_allocator(members, a.timesteps, seed=a.seed, verbose=0)
    out = save_allocator(model, a.out, members[0])
    print(f"allocator trained for {a.timesteps} steps on {len(members)} sim configs -> {out}")
    return 0


@dataclass(frozen=True)
class ConvertAllocatorArgs:
    """Rewrite an old allocator directory (a pickled SB3 model.zip) as policy.safetensors + policy.json, in place."""

    allocator: str
    """the old allocator directory (model.zip + env_config.json)"""
    trust: bool = False
    """required: loading model.zip unpickles it, which runs any code it carries; only for files you trust"""


def cmd_convert_allocator(argv: Sequence[str]) -> int:
    a = parse_config(ConvertAllocatorArgs, list(argv), prog="rankrl rollouts convert-allocator")
    from rankrl.rollouts.allocator import convert_allocator

    if not a.trust:
        print(f"rankrl rollouts convert-allocator: converting {a.allocator} unpickles its model.zip, which runs any "
              "code it carries; add --trust if you trust where it came from (else retrain with "
              "`rankrl rollouts train-allocator`)", file=sys.stderr)  # fmt: skip
        return 2
    out = convert_allocator(a.allocator, trust=True)
    print(f"converted -> {out} (policy.safetensors + policy.json; model.zip is no longer read)")
    return 0


def make_allocator(args):
    """The allocator named by ``--allocator``: uniform, knapsack, or a trained policy directory."""
    from rankrl.rollouts.grpo import knapsack_allocator, uniform_allocator

    if args.allocator == "uniform":
        return uniform_allocator
    if args.allocator == "knapsack":
        return knapsack_allocator(n_min=args.n_min, n_max=args.n_max)
    from rankrl.rollouts.allocator import trainer_allocator

    return trainer_allocator(args.allocator)

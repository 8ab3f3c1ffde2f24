"""The ``rankrl`` console script: one entry point, subcommands in a plain dict (like TRL's ``trl`` command).

Every subcommand parses its own dataclass with tyro, so ``rankrl <cmd> --help`` lists every field with its
docstring. Heavy libraries load only inside the subcommand that needs them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

from rankrl import __version__
from rankrl.ranks.finetune import FineTuneConfig


@dataclass(frozen=True)
class FinetuneArgs(FineTuneConfig):
    """Run a live LoRA fine-tune with per-module ranks; prints metrics and costs, exports a PEFT adapter."""

    out: str = "runs/finetune"
    """run directory: metrics.jsonl, checkpoint.pt, adapter/ (PEFT), curves.png, summary.json"""
    wandb: bool = True
    """log to W&B (offline unless WANDB_MODE / credentials say otherwise)"""
    resume: bool = False
    """continue from <out>/checkpoint.pt instead of starting anew"""
    progress: bool = True
    """show a progress bar"""


def cmd_finetune(argv: Sequence[str]) -> int:
    import tyro

    args = tyro.cli(FinetuneArgs, args=list(argv), prog="rankrl finetune")
    from rankrl.ranks.finetune_job import run_finetune

    config = FineTuneConfig(**{f.name: getattr(args, f.name) for f in fields(FineTuneConfig)})
    extra = {k: v for k, v in asdict(args).items() if k not in asdict(config)}
    return run_finetune(config, **extra)


BUDGET_USAGE = """usage: rankrl budget {train,train-allocator} [--help] [options]

  train             GRPO, each prompt getting the rollouts an allocator gives it (Knapsack RL);
                    every GRPOConfig flag works
  train-allocator   train a PPO allocator on the RolloutBudget-Sim env (for --allocator DIR)"""


def cmd_budget(argv: Sequence[str]) -> int:
    """``rankrl budget train ...``: GRPO with per-prompt rollout budgets (every GRPOConfig flag works)."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(BUDGET_USAGE)
        return 0
    if argv[0] == "train-allocator":
        return cmd_train_allocator(argv[1:])
    if argv[0] != "train":
        print(f"rankrl budget: unknown subcommand {argv[0]!r}; use 'train' or 'train-allocator'", file=sys.stderr)
        return 2
    from trl import GRPOConfig, TrlParser

    from rankrl.rollouts.job import BudgetArgs, grpo_defaults, run_budget_train

    rest = argv[1:]
    if "-h" in rest or "--help" in rest:
        TrlParser((BudgetArgs, GRPOConfig), prog="rankrl budget train").parse_args(["--help"])
    parser = TrlParser((BudgetArgs, GRPOConfig), prog="rankrl budget train")
    args, config = parser.parse_args_and_config(grpo_defaults(rest))
    return run_budget_train(args, config, make_allocator(args))


@dataclass(frozen=True)
class TrainAllocatorArgs:
    """Train the learned rollout allocator (SB3 PPO, one head shared by all prompts) on RolloutBudget-Sim-v0."""

    out: str = "runs/allocator"
    """directory for model.zip + env_config.json (pass it to `rankrl budget train --allocator`)"""
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
    import tyro

    a = tyro.cli(TrainAllocatorArgs, args=list(argv), prog="rankrl budget train-allocator")
    from rankrl.rollouts.allocator import save_allocator, train_allocator

    base = dict(prompts_per_round=a.prompts_per_round, rollouts_per_prompt=a.rollouts_per_prompt, n_min=a.n_min,
                n_max=a.n_max)  # fmt: skip
    members = [dict(base, difficulty=d, history_rounds=h) for d in a.difficulty for h in a.history_rounds]
    model = train_allocator(members, a.timesteps, seed=a.seed, verbose=0)
    out = save_allocator(model, a.out, members[0])
    print(f"allocator trained for {a.timesteps} steps on {len(members)} sim configs -> {out}")
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


def cmd_train_policy(argv: Sequence[str]) -> int:
    """``rankrl train-policy``: PPO rank allocator on LoRARank(-Sim), checkpoints/resume, live evaluation."""
    import tyro

    from rankrl.ranks.train import TrainPolicyConfig

    config = tyro.cli(TrainPolicyConfig, args=list(argv), prog="rankrl train-policy")
    from rankrl.ranks.train import train_policy

    train_policy(config)
    return 0


def _policy_command(argv: Sequence[str], config_name: str, fn_name: str, prog: str) -> int:
    """Parse ``rankrl.ranks.apply.<config_name>`` with tyro and run ``<fn_name>``; a policy file from another
    observation layout is a clear message and exit status 2, not a traceback."""
    import tyro

    from rankrl.ranks import apply

    config = tyro.cli(getattr(apply, config_name), args=list(argv), prog=prog)
    try:
        getattr(apply, fn_name)(config)
    except apply.PolicyLayoutError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_apply(argv: Sequence[str]) -> int:
    """``rankrl apply``: a trained rank policy -> PEFT adapter_config.json for any model (+ optional fine-tune)."""
    return _policy_command(argv, "ApplyConfig", "apply_policy", "rankrl apply")


def cmd_baselines(argv: Sequence[str]) -> int:
    """``rankrl baselines``: every rank baseline (and a policy) fine-tuned live at equal budget, one table."""
    return _policy_command(argv, "BaselinesConfig", "run_baselines", "rankrl baselines")


RERANK_USAGE = """usage: rankrl rerank {train,train-encoder,eval} [--help] [options]

  train          GRPO reranker: --recipe rank-r1|erank|grouprank (erank: SFT --sft_steps, then listwise GRPO);
                 every GRPOConfig flag works
  train-encoder  GRPO over sampled rankings with a MiniLM bi-encoder policy (LoRA query encoder + BM25 weight)
  eval           rerank BM25 top-k of held-out queries with a trained model; TREC run file + nDCG@10 table"""


def cmd_rerank(argv: Sequence[str]) -> int:
    """``rankrl rerank train|eval``: GRPO reranker recipes on TRL and their evaluation."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(RERANK_USAGE)
        raise SystemExit(0)  # like the argparse/tyro --help of every other subcommand (tests/test_cli.py)
    if argv[0] == "eval":
        import tyro

        from rankrl.rerank.job import EvalArgs, run_rerank_eval

        run_rerank_eval(tyro.cli(EvalArgs, args=argv[1:], prog="rankrl rerank eval"))
        return 0
    if argv[0] == "train-encoder":
        import tyro

        from rankrl.rerank.encoder import EncoderGRPOArgs, run_encoder_grpo

        run_encoder_grpo(tyro.cli(EncoderGRPOArgs, args=argv[1:], prog="rankrl rerank train-encoder"))
        return 0
    if argv[0] != "train":
        print(f"rankrl rerank: unknown subcommand {argv[0]!r}; use 'train', 'train-encoder' or 'eval'", file=sys.stderr)
        return 2
    from trl import GRPOConfig, TrlParser

    from rankrl.rerank.job import RerankArgs, grpo_defaults, run_rerank_train

    parser = TrlParser((RerankArgs, GRPOConfig), prog="rankrl rerank train")
    if "-h" in argv[1:] or "--help" in argv[1:]:
        parser.parse_args(["--help"])
    args, config = parser.parse_args_and_config(grpo_defaults(argv[1:]))
    return run_rerank_train(args, config)


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "finetune": (cmd_finetune, "live LoRA fine-tune with per-module rank masks, metrics and costs"),
    "budget": (cmd_budget, "GRPO with per-prompt rollout budgets: uniform, Knapsack RL or a learned allocator"),
    "train-policy": (cmd_train_policy, "train a LoRA rank policy (PPO) on the calibrated sim, evaluate it live"),
    "apply": (cmd_apply, "apply a rank policy to any model -> PEFT adapter_config.json (+ --finetune)"),
    "baselines": (cmd_baselines, "uniform (lr-tuned), random, spectrum, importance, AdaLoRA, policy: equal budget"),
    "rerank": (cmd_rerank, "GRPO rerankers (Rank-R1, ERank, GroupRank) on TRL: train and eval"),
}


def _usage() -> str:
    lines = [f"rankrl {__version__}: RL that decides where fine-tuning capacity and compute go.", "",
             "usage: rankrl <command> [--help] [options]", "", "commands:"]  # fmt: skip
    lines += [f"  {name:<13} {doc}" for name, (_, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rankrl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return COMMANDS[name][0](rest)


if __name__ == "__main__":
    sys.exit(main())

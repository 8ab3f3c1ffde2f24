"""``rankrl rerank train | train-encoder | eval``: GRPO rerankers (dispatched by ``rankrl.cli``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rankrl.args import parse_config

RERANK_USAGE = """usage: rankrl rerank {train,train-encoder,eval} [--help] [options]

  train          GRPO reranker: --recipe rank-r1|erank|grouprank|prorank (erank: SFT --sft_steps, then listwise
                 GRPO; prorank: GRPO prompt warmup for --max_steps, then --score_steps of score learning);
                 every GRPOConfig flag works; --resume_from_checkpoint DIR|true continues a run
  train-encoder  GRPO over sampled rankings with a MiniLM bi-encoder policy (LoRA query encoder + BM25 weight)
  eval           rerank BM25 top-k of held-out queries with a trained model; TREC run file + nDCG@10 table"""


#: ``rankrl rerank train``'s own defaults on top of the shared GRPO ones (rankrl.args)
RERANK_GRPO_DEFAULTS = {"--output_dir": "runs/rerank", "--max_completion_length": "48", "--log_completions": "true"}


def cmd_rerank(argv: Sequence[str]) -> int:
    """``rankrl rerank train|eval``: GRPO reranker recipes on TRL and their evaluation."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(RERANK_USAGE)
        raise SystemExit(0)  # like the argparse/tyro --help of every other subcommand (tests/test_cli.py)
    if argv[0] == "eval":
        from rankrl.rerank.job import EvalArgs, run_rerank_eval

        run_rerank_eval(parse_config(EvalArgs, argv[1:], prog="rankrl rerank eval"))
        return 0
    if argv[0] == "train-encoder":
        from rankrl.rerank.encoder import EncoderGRPOArgs, run_encoder_grpo

        run_encoder_grpo(parse_config(EncoderGRPOArgs, argv[1:], prog="rankrl rerank train-encoder"))
        return 0
    if argv[0] != "train":
        print(f"rankrl rerank: unknown subcommand {argv[0]!r}; use 'train', 'train-encoder' or 'eval'", file=sys.stderr)
        return 2
    from trl import GRPOConfig, TrlParser

    from rankrl.args import flag_value, passed, with_grpo_defaults
    from rankrl.rerank.job import RerankArgs, run_rerank_train

    parser = TrlParser((RerankArgs, GRPOConfig), prog="rankrl rerank train")
    if "-h" in argv[1:] or "--help" in argv[1:]:
        parser.parse_args(["--help"])
    # TRL validates num_generations while parsing: start it at --rollouts, which it is set to anyway
    defaults = RERANK_GRPO_DEFAULTS | {"--num_generations": flag_value(argv[1:], "--rollouts") or
                                       str(RerankArgs.rollouts)}  # fmt: skip
    args, config = parser.parse_args_and_config(with_grpo_defaults(argv[1:], defaults))
    if passed(argv[1:], "--num_generations"):
        from rankrl.resume import check_num_generations

        check_num_generations(config.num_generations, args.rollouts, "--rollouts", "rankrl rerank train")
    return run_rerank_train(args, config)



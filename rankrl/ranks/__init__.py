"""LoRA rank allocation for training: targets, costs, budgets, the live masked-LoRA run, the rank env, policies,
baselines."""

"""Knapsack RL rollout budgets for GRPO: the allocator maths, the variable-group GRPO trainer, the env, learned
allocators."""

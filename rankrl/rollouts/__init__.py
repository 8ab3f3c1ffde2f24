"""Knapsack RL rollout budgets for GRPO, bottom to top: ``knapsack`` (the allocator maths, pure numpy),
``history`` (one per-prompt rollout record), ``config`` / ``sim`` / ``env`` (the RolloutBudget envs), ``data`` /
``grpo`` / ``live`` (the variable-group GRPO trainer and the env's live backend), ``allocator`` / ``calibrate``
(learned allocators, sim calibration), ``job`` / ``commands`` (``rankrl rollouts``)."""

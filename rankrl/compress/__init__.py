"""DR-RL: rank allocation for inference - factorize attention (and MLP) projections under a FLOP budget."""

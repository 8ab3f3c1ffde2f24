"""rankrl: reinforcement learning that decides where fine-tuning capacity and compute go.

Importing the package is cheap: torch, transformers, PEFT, TRL and W&B load only when a module needs them.
The environments are registered with Gymnasium here under string entry points (the env module and its heavy
imports load on ``gymnasium.make``)::

    import gymnasium, rankrl
    env = gymnasium.make("rankrl/RolloutBudget-Sim-v0")
"""

__version__ = "0.1.0"

#: id -> (entry point, default kwargs)
ENVS: dict[str, tuple[str, dict]] = {
    "rankrl/LoRARank-Sim-v1": ("rankrl.ranks.env:LoRARankEnv", {"backend": "sim"}),
    "rankrl/LoRARank-v1": ("rankrl.ranks.env:LoRARankEnv", {"backend": "live"}),
    "rankrl/RolloutBudget-Sim-v0": ("rankrl.rollouts.env:RolloutBudgetEnv", {"backend": "sim"}),
    "rankrl/RolloutBudget-v0": ("rankrl.rollouts.env:RolloutBudgetEnv", {"backend": "live"}),
    "rankrl/AttentionRank-v0": ("rankrl.compress.env:AttentionRankEnv", {}),
    "rankrl/Rerank-v0": ("rankrl.rerank.env:RerankEnv", {}),  # needs collection=<Collection or path>
}


def register_envs() -> None:
    """Register every rankrl env with Gymnasium (idempotent; runs on import)."""
    try:
        import gymnasium
    except ImportError:  # the package still imports; only gymnasium.make needs it
        return
    for env_id, (entry_point, kwargs) in ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, kwargs=kwargs)


register_envs()

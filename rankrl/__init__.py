"""rankrl: reinforcement learning that decides where fine-tuning capacity and compute go.

Importing the package is cheap: torch, transformers, PEFT, TRL and W&B load only when a module needs them.
"""

__version__ = "0.1.0"

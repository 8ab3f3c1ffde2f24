"""Moved to the shared core: :mod:`rankrl.targets` (the compress domain needs it too). Kept as a re-export until the
rank domain's imports point there."""

from rankrl.targets import KINDS, TargetModule, find_target_modules, projection_kind

__all__ = ["KINDS", "TargetModule", "find_target_modules", "projection_kind"]

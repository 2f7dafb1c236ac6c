"""Training: one loop, with frozen / LoRA / full strategies."""

from prefheads.training.config import FitConfig
from prefheads.training.fit import FitResult, fit

__all__ = ["FitConfig", "FitResult", "fit"]

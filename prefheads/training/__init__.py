"""Training: one loop, with frozen / LoRA / full strategies (the modes of :data:`MODES`)."""

from prefheads.training.config import FitConfig
from prefheads.training.fit import FitResult, fit
from prefheads.training.modes import MODES
from prefheads.training.strategies import Trainable  # registers the shipped modes

__all__ = ["MODES", "FitConfig", "FitResult", "Trainable", "fit"]

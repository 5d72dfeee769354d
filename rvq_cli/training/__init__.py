"""Training: the Accelerate engine, checkpoints, builders."""

from .trainer import TrainingError, TrainResult, train

__all__ = ["TrainResult", "TrainingError", "train"]

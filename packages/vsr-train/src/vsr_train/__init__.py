"""vsr_train: Stage-1 SFT and Stage-2 GRPO on DeepSpeed, evaluation runs."""

__version__ = "0.1.0"

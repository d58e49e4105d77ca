"""Fine-tuning: LoRA / full, an explicit Optax chain, a pure jitted train step, Orbax checkpoints, HF export."""

from delift_jax.train.checkpoint import CheckpointMismatchError
from delift_jax.train.config import TrainConfig
from delift_jax.train.export import export_hf, merged_copy, to_hf_config
from delift_jax.train.lora import LoRAConfig, LoRALinear, apply_lora, merge_lora
from delift_jax.train.loop import TrainingDivergedError, TrainResult, finetune
from delift_jax.train.step import TrainState, make_train_step, split_model

__all__ = ["CheckpointMismatchError", "LoRAConfig", "LoRALinear", "TrainConfig", "TrainResult", "TrainState",
           "TrainingDivergedError", "apply_lora", "export_hf", "finetune", "make_train_step", "merge_lora",
           "merged_copy", "split_model", "to_hf_config"]

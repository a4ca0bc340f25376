"""Training: the pre-training loop and LoRA fine-tuning (:mod:`.sft`), both on Accelerate."""
from .bench import bench_train, peak_flops
from .common import (
                     OPTIMIZERS,
                     batch_plan,
                     lr_at,
                     lr_lambda,
                     lr_schedulers,
                     make_accelerator,
                     make_optimizers,
)
from .loop import (
                     COMPILE_MODES,
                     FIXED_FIELDS,
                     TRAIN_PRESETS,
                     TrainConfig,
                     WindowSampler,
                     check_resume,
                     get_train_config,
                     read_run,
                     steps_per_epoch,
                     train,
                     validation_loss,
)

__all__ = ["COMPILE_MODES", "FIXED_FIELDS", "OPTIMIZERS", "TRAIN_PRESETS", "TrainConfig",
           "WindowSampler", "batch_plan", "bench_train", "check_resume", "get_train_config",
           "lr_at", "lr_lambda", "lr_schedulers", "make_accelerator", "make_optimizers",
           "peak_flops", "read_run", "steps_per_epoch", "train", "validation_loss"]

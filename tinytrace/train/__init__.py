"""Training: the pre-training loop and LoRA fine-tuning, both on Accelerate."""
from .loop import *  # noqa: F401,F403

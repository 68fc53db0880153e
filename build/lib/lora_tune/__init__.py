"""lora_tune: Ray Tune hyperparameter sweeps for LoRA and QLoRA fine-tuning.

Start with `python -m lora_tune.sweep` (see README.md).
"""

__version__ = "0.1.0"

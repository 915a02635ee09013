"""lit-vr1: R1-style GRPO for vision-language models, on Lightning."""

__version__ = "0.1.0"

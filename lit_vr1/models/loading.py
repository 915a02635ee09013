"""Load a policy and its processor by name or path: one code path for real checkpoints
(``Qwen/Qwen2.5-VL-3B-Instruct``, a local ``save_pretrained`` directory) and the tiny
random models (``tiny:qwen2_5_vl``, ``tiny:qwen2_vl``, ``tiny:qwen3_vl``, ``tiny:internvl``) built
in-process. The supported model types are those of the registered families
(:mod:`lit_vr1.models.families`)."""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from lit_vr1.models.families import ModelLoadError, family_for_model_type, family_of, supported_model_types
from lit_vr1.models.tiny import FAMILIES, TinySpec, build_model, build_processor

SUPPORTED_MODEL_TYPES = supported_model_types()
TINY_PREFIX = "tiny:"

__all__ = ["ModelLoadError", "SUPPORTED_MODEL_TYPES", "check_model_type", "load_model", "load_processor"]


def _tiny_family(name: str) -> str | None:
    if not name.startswith(TINY_PREFIX):
        return None
    family = name[len(TINY_PREFIX):]
    if family not in FAMILIES:
        raise ModelLoadError(f"model {name!r}: no tiny model of family {family!r}; choose one of "
                             + ", ".join(TINY_PREFIX + f for f in FAMILIES))
    return family


def check_model_type(name: str) -> str:
    """The config's model_type, or a :class:`ModelLoadError` saying missing or unsupported."""
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        where = "local path" if os.path.sep in name or os.path.exists(name) else "name"
        raise ModelLoadError(
            f"model {name!r} cannot be loaded: the {where} is missing or holds no config.json "
            f"(real checkpoints need network access or a local copy). Cause: {e}"
        ) from None
    family_for_model_type(config.model_type, f"model {name!r}")  # a ModelLoadError listing the families
    return config.model_type


def load_processor(name: str, min_pixels: int | None = None, max_pixels: int | None = None, seed: int = 0,
                   tiny_spec: TinySpec | None = None) -> ProcessorMixin:
    """The processor of ``name``, with the image size bounds set (qwen-vl-utils convention:
    images are resized to multiples of 28 with min_pixels <= h*w <= max_pixels).
    ``tiny_spec`` sizes a ``tiny:`` model (ignored for real checkpoints)."""
    family = _tiny_family(name)
    if family is not None:
        processor = build_processor(family, tiny_spec or TinySpec(), seed)
    else:
        check_model_type(name)
        processor = AutoProcessor.from_pretrained(name)
    family_of(processor).images.set_pixel_bounds(processor, min_pixels, max_pixels)
    return processor


def load_model(name: str, processor: ProcessorMixin, dtype: str = "float32", attn_implementation: str = "sdpa",
               seed: int = 0, tiny_spec: TinySpec | None = None) -> PreTrainedModel:
    """The policy model of ``name`` in ``dtype`` (float32, bfloat16, float16 or auto)."""
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    family = _tiny_family(name)
    if family is not None:
        model = build_model(family, processor.tokenizer, tiny_spec or TinySpec(), seed)
        if torch_dtype != "auto":
            model = model.to(torch_dtype)
        model.config._attn_implementation = attn_implementation
        return model
    check_model_type(name)
    return AutoModelForImageTextToText.from_pretrained(name, dtype=torch_dtype, attn_implementation=attn_implementation)

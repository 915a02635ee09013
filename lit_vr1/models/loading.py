"""Load a policy and its processor by name or path: one code path for real checkpoints
(``Qwen/Qwen2.5-VL-3B-Instruct``, a local ``save_pretrained`` directory) and the tiny
random models (``tiny:qwen2_5_vl``, ``tiny:qwen2_vl``, ``tiny:qwen3_vl``, ``tiny:internvl``) built
in-process. The supported model types are those of the registered families
(:mod:`lit_vr1.models.families`)."""

from __future__ import annotations

import os

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from lit_vr1.models.families import (
    ModelLoadError,
    family_for_model_type,
    family_of,
    find_family,
    supported_model_types,
)
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
    return _config(name).model_type


def _config(name: str):
    """The checkpoint's config, of a supported family, or a :class:`ModelLoadError`."""
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        where = "local path" if os.path.sep in name or os.path.exists(name) else "name"
        raise ModelLoadError(
            f"model {name!r} cannot be loaded: the {where} is missing or holds no config.json "
            f"(real checkpoints need network access or a local copy). Cause: {e}"
        ) from None
    family_for_model_type(config.model_type, f"model {name!r}")  # a ModelLoadError listing the families
    return config


def check_parts(name: str, processor: ProcessorMixin, config) -> None:
    """Refuse, before any model runs, a checkpoint whose processor does not fit its weights:
    a processor of another family, no chat template, a tokenizer that does not know the image
    placeholder token or gives it another id than ``config.image_token_id``, a patch or merge
    size other than the vision tower's. Each failed mid-fit before, in transformers, with
    "Image features and image tokens do not match", a reshape error, or a count "likely due to
    truncation" (a folder without tokenizer files loads an empty tokenizer)."""
    where = f"model {name!r}"
    model_family, processor_family = family_for_model_type(config.model_type, where), find_family(processor)
    if processor_family is not None and processor_family.name != model_family.name:
        raise ModelLoadError(f"{where}: its processor is {type(processor).__name__} (family {processor_family.name}) "
                             f"but its config.json's model_type is {config.model_type} (family {model_family.name}), "
                             "and lit-vr1 reads the box frame and the image inputs by the processor's family: copy the "
                             "processor files of the model's own base checkpoint into the folder")
    tokenizer = getattr(processor, "tokenizer", None)
    if not (getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)):
        raise ModelLoadError(f"{where} has no chat template (chat_template.jinja, or chat_template in "
                             "tokenizer_config.json): copy it from the base checkpoint, or save the processor with "
                             "processor.save_pretrained(folder)")
    token = getattr(processor, "image_token", None)
    if tokenizer is not None and isinstance(token, str):
        token_id = tokenizer.convert_tokens_to_ids(token)
        known = isinstance(token_id, int) and tokenizer.convert_ids_to_tokens(token_id) == token
        if not known:
            raise ModelLoadError(f"{where}: its tokenizer does not know the image token {token} (a folder without "
                                 "tokenizer.json / tokenizer_config.json loads an empty tokenizer): copy the tokenizer "
                                 "files of the base checkpoint into the folder")
        expected = getattr(config, "image_token_id", None)
        if isinstance(expected, int) and expected != token_id:
            raise ModelLoadError(f"{where}: config.json's image_token_id is {expected} but its tokenizer gives "
                                 f"{token} the id {token_id}: every image's tokens would go unmatched; the config "
                                 "and the tokenizer come from different checkpoints")
    image_processor, vision = getattr(processor, "image_processor", None), getattr(config, "vision_config", None)
    for ours, theirs in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size")):
        a, b = getattr(image_processor, ours, None), getattr(vision, theirs, None)
        if isinstance(a, int) and isinstance(b, int) and a != b:
            raise ModelLoadError(f"{where}: its image processor's {ours} is {a} but the vision tower's {theirs} is "
                                 f"{b}: the processor files come from another checkpoint than the weights")


def load_processor(name: str, min_pixels: int | None = None, max_pixels: int | None = None, seed: int = 0,
                   tiny_spec: TinySpec | None = None) -> ProcessorMixin:
    """The processor of ``name``, with the image size bounds set (qwen-vl-utils convention:
    images are resized to multiples of 28 with min_pixels <= h*w <= max_pixels).
    ``tiny_spec`` sizes a ``tiny:`` model (ignored for real checkpoints)."""
    family = _tiny_family(name)
    if family is not None:
        processor = build_processor(family, tiny_spec or TinySpec(), seed)
    else:
        config = _config(name)
        try:
            processor = AutoProcessor.from_pretrained(name)
        except (OSError, ValueError, TypeError) as e:
            raise ModelLoadError(f"model {name!r}: its processor cannot be loaded (the processor files, "
                                 "preprocessor_config.json / processor_config.json, tokenizer files and chat template, "
                                 "belong beside the weights: processor.save_pretrained(folder)). Cause: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        check_parts(name, processor, config)
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

"""Load a policy and its processor by name or path: one code path for real checkpoints
(``Qwen/Qwen2.5-VL-3B-Instruct``, a local ``save_pretrained`` directory) and the tiny
random models (``tiny:qwen2_5_vl``, ``tiny:qwen2_vl``, ``tiny:qwen3_vl``, ``tiny:internvl``) built
in-process. The supported model types are those of the registered families
(:mod:`lit_vr1.models.families`)."""

from __future__ import annotations

import os
import zipfile

import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
)

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


def not_a_model_folder(name: str) -> str | None:
    """Why ``name`` is no model to load, when that can be told from the disk: a training
    checkpoint (``.ckpt``) or a weights file given for a model folder, a folder without
    ``config.json``, or a local path that does not exist (its first folder exists here, or it
    starts with ``/``, ``.`` or ``~``). Each was told as a hub lookup that failed, or as "of
    type None" (a new user's trial)."""
    where = f"model {name!r}"
    if os.path.isfile(name):
        if name.endswith(".ckpt") or zipfile.is_zipfile(name):
            return (f"{where} is a training checkpoint, not a model folder: export it (python -m lit_vr1.export {name} "
                    "<folder>) and give the folder, or resume its run with --ckpt_path")
        return (f"{where} is a file: a model is a folder holding config.json, the weights and the processor files "
                "(what save_pretrained or python -m lit_vr1.export writes), or a hub name")
    if os.path.isdir(name):
        if os.path.isfile(os.path.join(name, "config.json")):
            return None
        ckpts = sorted(f for f in os.listdir(name) if f.endswith(".ckpt"))
        return (f"{where} is a folder without config.json" + (
            f": it holds training checkpoints ({', '.join(ckpts[:2])}); export one with python -m lit_vr1.export "
            f"{os.path.join(name, ckpts[-1])} <folder> and give that folder" if ckpts else
            ": a model folder holds config.json, the weights and the processor files (save_pretrained's)"))
    if name.startswith("~") and os.path.exists(os.path.expanduser(name)):
        return f"{where}: '~' is not read as the home folder here; give the full path, {os.path.expanduser(name)}"
    if name.startswith(("/", ".", "~")):
        return f"{where}: no such folder (read from {os.getcwd()})"
    return None  # a hub name, or a relative folder that is not here: the loader's error below says both


def _config(name: str):
    """The checkpoint's config, of a supported family, or a :class:`ModelLoadError`."""
    problem = not_a_model_folder(name)
    if problem:
        raise ModelLoadError(problem)
    try:  # the raw config.json first: AutoConfig would ask to run a remote-code checkpoint's own code
        raw, _ = PretrainedConfig.get_config_dict(name)
    except (OSError, ValueError) as e:
        first = name.split("/", 1)[0]
        if first != name and os.path.isdir(first):  # runs/nonexistent_model: a folder here more likely than a hub name
            raise ModelLoadError(f"model {name!r}: no such folder under {first}/ (read from {os.getcwd()}), and no hub "
                                 "model of that name could be read (offline, or none)") from None
        where = "local path" if os.path.sep in name or os.path.exists(name) else "name"
        raise ModelLoadError(
            f"model {name!r} cannot be loaded: the {where} is missing or holds no config.json "
            f"(real checkpoints need network access or a local copy). Cause: {e}"
        ) from None
    family_for_model_type(raw.get("model_type"), f"model {name!r}")  # a ModelLoadError listing the families
    return AutoConfig.from_pretrained(name)


def check_parts(name: str, processor: ProcessorMixin, config) -> None:
    """Refuse, before any model runs, a checkpoint whose processor does not fit its weights:
    a processor of another family, no chat template, a tokenizer that does not know the image
    placeholder token or gives it another id than ``config.image_token_id``, a patch or merge
    size other than the vision tower's. Each failed mid-fit before, in transformers, with
    "Image features and image tokens do not match", a reshape error, or a count "likely due to
    truncation" (a folder without tokenizer files loads an empty tokenizer)."""
    where = f"model {name!r}"
    model_family, processor_family = family_for_model_type(config.model_type, where), find_family(processor)
    if processor_family is None:
        raise ModelLoadError(f"{where}: its processor is {type(processor).__name__}, of no family lit-vr1 supports "
                             f"(its config.json's model_type is {config.model_type}, family {model_family.name}): copy "
                             "the processor files of the model's own base checkpoint into the folder")
    if processor_family.name != model_family.name:
        raise ModelLoadError(f"{where}: its processor is {type(processor).__name__} (family {processor_family.name}) "
                             f"but its config.json's model_type is {config.model_type} (family {model_family.name}), "
                             "and lit-vr1 reads the box frame and the image inputs by the processor's family: copy the "
                             "processor files of the model's own base checkpoint into the folder")
    tokenizer = getattr(processor, "tokenizer", None)
    if not (getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)):
        raise ModelLoadError(f"{where} has no chat template (chat_template.jinja, or chat_template in "
                             "tokenizer_config.json): copy it from the base checkpoint, or save the processor with "
                             "processor.save_pretrained(folder)")
    if not getattr(processor, "chat_template", None):  # only the tokenizer's: the processor's apply_chat_template needs its own
        processor.chat_template = tokenizer.chat_template
    check_template_places_images(where, processor)
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
    pairs = [(f"image processor's {ours}", getattr(image_processor, ours, None), f"vision tower's {theirs}",
              getattr(vision, theirs, None)) for ours, theirs in (("patch_size", "patch_size"),
                                                                    ("merge_size", "spatial_merge_size"))]
    pairs += [("processor's image_seq_length (tokens per image tile)", getattr(processor, "image_seq_length", None),
               "config.json's image_seq_length", getattr(config, "image_seq_length", None)),
              ("image processor's tile size", _tile_side(image_processor), "vision tower's image_size",
               _tile_side(vision, "image_size"))]
    for ours, a, theirs, b in pairs:
        if isinstance(a, int) and isinstance(b, int) and a != b:
            raise ModelLoadError(f"{where}: its {ours} is {a} but the {theirs} is {b}: the processor files come "
                                 "from another checkpoint than the weights")


def _tile_side(obj, field: str = "size") -> int | None:
    """The side of a square tile: an InternVL image processor's ``size`` ({"height", "width"}) or
    its vision config's ``image_size`` (an int or [h, w]); None when not square or absent (Qwen's
    processors size images by a pixel budget, not tiles)."""
    value = getattr(obj, field, None)
    if field == "size" and value is not None and not isinstance(value, dict):
        value = vars(value) if hasattr(value, "__dict__") else None
    if isinstance(value, dict):
        value = [value.get("height"), value.get("width")]
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        value = value[0]
    return value if isinstance(value, int) else None


def check_template_places_images(where: str, processor: ProcessorMixin) -> None:
    """Refuse a chat template that writes no image placeholder (``processor.image_token``) for
    an image item of lit-vr1's messages (another family's template, or a text-only one): each
    prompt would carry no image tokens, and transformers would refuse the first forward, minutes
    into a fit, with "The total number of <|image_pad|> tokens ... should be the same as the
    number of images"."""
    from lit_vr1.data.prompts import build_messages

    token = getattr(processor, "image_token", None)
    if not isinstance(token, str):
        return
    try:
        text = processor.apply_chat_template(build_messages("Where?", 1), add_generation_prompt=True, tokenize=False)
    except Exception as e:  # noqa: BLE001 - a template that fails to render: said as such
        raise ModelLoadError(f"{where}: its chat template fails on a message with one image and a question: "
                             f"{type(e).__name__}: {e}") from None
    if token not in text:
        raise ModelLoadError(f"{where}: its chat template writes no {token} for an image (rendered: {text[:120]!r}): "
                             "every prompt would reach the model without its image; use the chat template of the "
                             "model's own base checkpoint")


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
    own = _pixel_bounds(processor)
    family_of(processor).images.set_pixel_bounds(processor, min_pixels, max_pixels)
    note = None if family is not None else replaced_bounds_note(name, own, _pixel_bounds(processor),
                                                                 (min_pixels is not None, max_pixels is not None))
    if note:
        rank_zero_info(note)
    return processor


def _pixel_bounds(processor: ProcessorMixin) -> tuple[int | None, int | None]:
    """(min_pixels, max_pixels) of a Qwen-style image processor (its ``size``'s shortest_edge and
    longest_edge); (None, None) for one that sizes images otherwise (InternVL's tiles)."""
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    return getattr(size, "get", {}.get)("shortest_edge"), getattr(size, "get", {}.get)("longest_edge")


def replaced_bounds_note(name: str, own: tuple, now: tuple, given: tuple[bool, bool] = (True, True)) -> str | None:
    """A note (one info line) when ``model.min_pixels`` / ``max_pixels`` replace a folder's own
    bounds: a recipe's choice over a base checkpoint's is meant (the R1V-Free and Vision-R1 recipes
    cap Qwen2.5-VL at 1003520 px), but over a fine-tune saved with other bounds its images are fed at
    other sizes than it trained on, and an export saves the new bounds. Only the bounds given are
    named (a bound ``set_pixel_bounds`` moved to meet a given one is warned of there). None when
    nothing given changed."""
    changed = [f"{flag} {a} -> {b}" for flag, a, b, g in zip(("min_pixels", "max_pixels"), own, now, given)
               if g and a != b]
    if not changed or None in own:
        return None
    return (f"model {name!r}: images are sized by model.min_pixels / max_pixels, not by its processor's own bounds "
            f"({', '.join(changed)}), and an export saves these (null keeps the folder's own)")


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

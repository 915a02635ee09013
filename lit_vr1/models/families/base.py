"""What lit-vr1 needs to know about one VLM family, and the registry of families.

A :class:`Family` is plain data plus an :class:`ImageInputs` object for the one place
where families really differ: how the processor lays out the vision tensors of a batch.

- Qwen2-VL / Qwen2.5-VL / Qwen3-VL: ``pixel_values`` (X, D) holds the flattened patches
  of all images one after another and ``image_grid_thw`` (I, 3) one (t, h, w) grid per
  image; an image owns ``t*h*w`` rows of ``pixel_values``.
- InternVL: ``pixel_values`` (X, 3, H, W) holds square tiles, several per image (a
  grid of tiles plus a thumbnail); the tile count of an image is only visible in the
  text, as its ``<img><IMG_CONTEXT>...</img>`` span.

Either way an image owns a run of consecutive ``pixel_values`` rows, so picking batch
rows (:func:`select_rows`) needs only "how many rows does each image own".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

# The frames a model writes boxes in (lit_vr1.rewards.boxes converts between them): pixels of the
# image the model saw, pixels of the original image, 0-1000 or 0-1 of the image's width and height.
BOX_FRAMES = ("input_pixels", "original_pixels", "norm1000", "norm1")

# Tensor keys of a processor batch that are not per text row.
PER_IMAGE_KEYS = ("image_grid_thw",)  # one row per image
PER_PIXEL_KEYS = ("pixel_values",)  # rows split among the images, in image order

# The decoder's attention and MLP projections of a transformers VLM whose language model is
# ``model.language_model`` (Qwen2/2.5/3-VL, InternVL): for re.fullmatch on full module names.
DECODER_LINEARS = (
    r"model\.language_model\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
)


class ModelLoadError(ValueError):
    """A model name or path that cannot be loaded; the message says why."""


@runtime_checkable
class ImageInputs(Protocol):
    """How a family's processor lays out the vision tensors of a batch."""

    def pixel_rows(self, inputs: dict[str, Tensor], processor: Any) -> list[int]:
        """How many rows of ``inputs["pixel_values"]`` each image owns, in batch order."""

    def input_sizes(self, inputs: dict[str, Tensor], image_sizes: list[tuple[int, int]],
                    processor: Any) -> list[tuple[int, int]]:
        """(width, height) of each image as the model saw it, from the batch and the
        images' original (width, height)."""

    def set_pixel_bounds(self, processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
        """Bound the image size the processor resizes to (or say why it cannot)."""

    def placeholder_tokens(self, processor: Any, counted: Any) -> list[int]:
        """The tokens each image's placeholder becomes in the processor's text, from
        ``processor._get_num_multimodal_tokens(image_sizes=...)`` (``counted``)."""


@dataclass(frozen=True, eq=False)
class Family:
    """One VLM family.

    name: the family's name (``tiny:<name>`` builds a tiny random one).
    model_types: ``config.model_type`` values of its checkpoints.
    model_class, processor_class: transformers' classes.
    vision_tower: dotted path, from the top-level model, of the vision encoder.
    vision_projector: dotted paths of the vision-to-language projector(s); they may lie
        inside the tower (Qwen's merger) or beside it (InternVL).
    lora_target_regex: the language model's linear layers, a regex matched with
        ``re.fullmatch`` against full module names (as peft matches a string
        ``target_modules``); never the vision tower or the projector.
    box_frame: the frame its checkpoints write boxes in (``BOX_FRAMES``).
    vision_tokens: vision placeholder tokens, never to be generated.
    images: how its processor lays out vision tensors (:class:`ImageInputs`).
    end_of_turn: the token that ends an assistant turn.
    hints: model_type -> advice, for checkpoints of a related but unsupported type.
    """

    name: str
    model_types: tuple[str, ...]
    model_class: type
    processor_class: type
    vision_tower: str
    vision_projector: tuple[str, ...]
    lora_target_regex: str
    box_frame: str
    vision_tokens: tuple[str, ...]
    images: ImageInputs
    end_of_turn: str = "<|im_end|>"
    hints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.box_frame not in BOX_FRAMES:
            raise ValueError(f"family {self.name}: box_frame {self.box_frame!r} is not one of {', '.join(BOX_FRAMES)}")
        re.compile(self.lora_target_regex)

    # -- modules ---------------------------------------------------------------------------
    def tower(self, model: nn.Module) -> nn.Module | None:
        """The vision tower of ``model`` (None when it has none at ``vision_tower``)."""
        return _submodule(model, self.vision_tower)

    def projectors(self, model: nn.Module) -> list[nn.Module]:
        return [m for m in (_submodule(model, p) for p in self.vision_projector) if m is not None]

    def lora_targets(self, model: nn.Module) -> list[str]:
        """Full names of the modules of ``model`` that ``lora_target_regex`` selects."""
        pattern = re.compile(self.lora_target_regex)
        return [n for n, _ in model.named_modules() if n and pattern.fullmatch(n)]


def base_model(model: Any) -> Any:
    """The transformers model inside a peft wrapper (``get_base_model``); ``model`` itself
    when it has no wrapper."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


# -- registry --------------------------------------------------------------------------------
FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to the registry (by name; its model types must be new)."""
    for other in FAMILIES.values():
        clash = set(other.model_types) & set(family.model_types)
        if clash and other.name != family.name:
            raise ValueError(f"model types {sorted(clash)} already belong to family {other.name}")
    FAMILIES[family.name] = family
    return family


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def supported_model_types() -> tuple[str, ...]:
    return tuple(t for f in FAMILIES.values() for t in f.model_types)


def get_family(name: str) -> Family:
    """The family called ``name``; a :class:`ModelLoadError` lists the known ones."""
    if name not in FAMILIES:
        raise ModelLoadError(f"no model family {name!r}; supported families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_for_model_type(model_type: str, what: str = "the model") -> Family:
    """The family of checkpoints of ``model_type``; a :class:`ModelLoadError` names the
    supported families otherwise (``what`` says which model, for the message)."""
    for f in FAMILIES.values():
        if model_type in f.model_types:
            return f
    hint = next((f.hints[model_type] for f in FAMILIES.values() if model_type in f.hints), "")
    raise ModelLoadError(
        f"{what} is of type {model_type!r}, which lit-vr1 does not support; "
        f"supported families: {', '.join(FAMILIES)}" + (f". {hint}" if hint else "")
    )


def family_of(obj: Any) -> Family:
    """The family of a model (by ``config.model_type``; peft wrappers are looked through),
    a config, a processor (by class), or a family name."""
    if isinstance(obj, Family):
        return obj
    if isinstance(obj, str):
        return get_family(obj)
    obj = base_model(obj) if isinstance(obj, nn.Module) else obj
    config = obj if hasattr(obj, "model_type") and not isinstance(obj, nn.Module) else getattr(obj, "config", None)
    if config is not None and getattr(config, "model_type", None):
        return family_for_model_type(config.model_type, f"{type(obj).__name__}")
    for cls in type(obj).__mro__:  # the most specific processor class first
        for f in FAMILIES.values():
            if f.processor_class is cls:
                return f
    raise ModelLoadError(f"{type(obj).__name__} belongs to no supported model family ({', '.join(FAMILIES)})")


def find_family(obj: Any) -> Family | None:
    """:func:`family_of`, or None where it has none."""
    try:
        return family_of(obj)
    except ModelLoadError:
        return None


def vision_token_ids(processor: Any) -> tuple[int, ...]:
    """Ids of the vision placeholder tokens (never to be generated) of the processor's model
    family that its tokenizer knows; every family's, for a processor of no known family."""
    family = find_family(processor)
    tokens = family.vision_tokens if family is not None else tuple(
        dict.fromkeys(t for f in FAMILIES.values() for t in f.vision_tokens))
    vocab = processor.tokenizer.get_vocab()
    return tuple(sorted(vocab[t] for t in tokens if t in vocab))


# -- rows of a batch -------------------------------------------------------------------------
def select_rows(inputs: dict[str, Tensor], images_per_row: list[int], rows: Tensor | list[int],
                image_rows: list[int]) -> dict[str, Tensor]:
    """Rows of a processor batch with the vision tensors of exactly those rows' images.

    images_per_row: images of each text row; image_rows: ``pixel_values`` rows of each image
    (a family's ``images.pixel_rows``). Per-image tensors (``image_grid_thw``) are indexed by
    image, ``pixel_values`` by the images' row runs, everything else by text row.
    """
    rows = rows.tolist() if isinstance(rows, Tensor) else list(rows)
    vision = set(PER_IMAGE_KEYS) | set(PER_PIXEL_KEYS)
    out = {k: v[rows] for k, v in inputs.items() if k not in vision}
    if not any(k in inputs for k in vision):
        return out
    first_image = _offsets(images_per_row)
    first_row = _offsets(image_rows)
    image_ids = [i for r in rows for i in range(first_image[r], first_image[r + 1])]
    if not image_ids:  # text-only rows: no vision inputs at all
        return out
    pixel_ids = [p for i in image_ids for p in range(first_row[i], first_row[i + 1])]
    for k in PER_IMAGE_KEYS:
        if k in inputs:
            out[k] = inputs[k][image_ids]
    for k in PER_PIXEL_KEYS:
        if k in inputs:
            out[k] = inputs[k][torch.tensor(pixel_ids, dtype=torch.long, device=inputs[k].device)]
    return out


def _offsets(counts: list[int]) -> list[int]:
    out = [0]
    for n in counts:
        out.append(out[-1] + int(n))
    return out

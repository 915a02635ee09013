"""Freezing the vision tower (and, separately, its projector) of a Qwen-VL policy.

In transformers' Qwen2-VL and Qwen2.5-VL classes the vision tower is ``model.visual``
(patch embedding, blocks) and its projector into the language model is
``model.visual.merger``. A frozen part keeps ``requires_grad=False``, so no gradient
reaches it and the optimiser, built from the trainable parameters, never holds it.
"""

from __future__ import annotations

from torch import nn


def vision_parts(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(tower parameters without the merger, merger parameters) of a Qwen-VL model."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None or not hasattr(visual, "merger"):
        raise ValueError(f"{type(model).__name__} has no model.visual with a merger: freeze_vision supports the Qwen-VL families")
    merger = list(visual.merger.parameters())
    ids = {id(p) for p in merger}
    return [p for p in visual.parameters() if id(p) not in ids], merger


def freeze_vision(model: nn.Module, tower: bool = True, merger: bool = False) -> int:
    """Freeze the vision tower and/or its merger in place; returns how many parameters were frozen."""
    tower_params, merger_params = vision_parts(model)
    frozen = (tower_params if tower else []) + (merger_params if merger else [])
    for p in frozen:
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen)

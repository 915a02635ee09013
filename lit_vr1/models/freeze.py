"""Freezing the vision tower (and, separately, its projector) of a VLM policy.

Where the tower and the projector live is the model family's to say
(:mod:`lit_vr1.models.families`): Qwen2/2.5/3-VL keep the tower at ``model.visual`` with
the projector inside it (``model.visual.merger``, and Qwen3-VL's DeepStack mergers
``model.visual.deepstack_merger_list``); InternVL has ``model.vision_tower`` and the
projector beside it, ``model.multi_modal_projector``. A frozen part keeps
``requires_grad=False``, so no gradient reaches it and the optimiser, built from the
trainable parameters, never holds it.
"""

from __future__ import annotations

from torch import nn

from lit_vr1.models.families import FAMILIES, Family, base_model, find_family


def _family(model: nn.Module) -> Family:
    family = find_family(model)
    if family is not None and family.tower(model) is not None:
        return family
    for family in FAMILIES.values():  # no config (or an unknown one): recognise the layout
        if family.tower(model) is not None and len(family.projectors(model)) == len(family.vision_projector):
            return family
    towers = " / ".join(dict.fromkeys(f.vision_tower for f in FAMILIES.values()))
    raise ValueError(
        f"{type(model).__name__} has no {towers} (the vision towers of the supported families "
        f"{', '.join(FAMILIES)}): freeze_vision cannot tell what to freeze"
    )


def vision_parts(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(tower parameters without the projector, projector parameters) of a VLM."""
    model = base_model(model)
    family = _family(model)
    projector = [p for m in family.projectors(model) for p in m.parameters()]
    ids = {id(p) for p in projector}
    return [p for p in family.tower(model).parameters() if id(p) not in ids], projector


def freeze_vision(model: nn.Module, tower: bool = True, merger: bool = False) -> int:
    """Freeze the vision tower and/or its projector (``merger``) in place; returns how many
    parameters were frozen."""
    tower_params, merger_params = vision_parts(model)
    frozen = (tower_params if tower else []) + (merger_params if merger else [])
    for p in frozen:
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen)

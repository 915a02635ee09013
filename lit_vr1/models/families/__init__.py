"""One small adapter per VLM family (see :mod:`lit_vr1.models.families.base`).

Importing this package registers Qwen2.5-VL, Qwen2-VL, Qwen3-VL and InternVL, in that
order (the order error messages list them in). Another family: build a :class:`Family`
and :func:`register` it."""

from lit_vr1.models.families.base import (
    BOX_FRAMES,
    FAMILIES,
    Family,
    ImageInputs,
    ModelLoadError,
    base_model,
    family_for_model_type,
    family_names,
    family_of,
    find_family,
    get_family,
    register,
    select_rows,
    supported_model_types,
    vision_token_ids,
)
from lit_vr1.models.families.internvl import INTERNVL
from lit_vr1.models.families.qwen2_5_vl import QWEN2_5_VL
from lit_vr1.models.families.qwen2_vl import QWEN2_VL
from lit_vr1.models.families.qwen3_vl import QWEN3_VL

for _family in (QWEN2_5_VL, QWEN2_VL, QWEN3_VL, INTERNVL):
    register(_family)

__all__ = [
    "BOX_FRAMES", "FAMILIES", "Family", "base_model", "ImageInputs", "ModelLoadError", "family_for_model_type",
    "family_names", "family_of", "find_family", "get_family", "register", "select_rows", "supported_model_types",
    "vision_token_ids",
    "QWEN2_5_VL", "QWEN2_VL", "QWEN3_VL", "INTERNVL",
]

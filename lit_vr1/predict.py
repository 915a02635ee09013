"""Greedy answers for prompts, with their boxes parsed and mapped to original pixels:
what ``lit-vr1 predict`` returns for each prompt (and ``callbacks.PredictionWriter`` writes)."""

from __future__ import annotations

import json

import torch
from transformers import PreTrainedModel, ProcessorMixin

from lit_vr1.config import SamplingConfig
from lit_vr1.data.jsonl import Sample
from lit_vr1.generation import generate
from lit_vr1.models.families import family_of, vision_token_ids
from lit_vr1.models.precision import cached_autocast
from lit_vr1.rewards.base import has_answer
from lit_vr1.rewards.boxes import answer_text, predicted_boxes
from lit_vr1.rollout import Rollout


@torch.no_grad()
def greedy_rollout(model: PreTrainedModel, processor: ProcessorMixin, samples: list[Sample],
                   max_new_tokens: int = 64) -> Rollout:
    """One greedy answer per sample (eval mode for the call, the model's mode restored after)."""
    cfg = SamplingConfig(max_completion_length=max_new_tokens, greedy=True, suppress_ids=vision_token_ids(processor))
    was_training = model.training
    model.eval()
    try:  # under mixed precision each weight cast to bf16 once for all the decoding steps
        with cached_autocast(next(model.parameters()).device.type):
            return generate(model, processor, samples, 1, cfg)
    finally:
        model.train(was_training)


def frame_of(model: PreTrainedModel, box_frame: str | None) -> str:
    """``box_frame`` as given, else the frame the model's family writes boxes in (Qwen2.5-VL:
    input_pixels; Qwen2-VL, Qwen3-VL, InternVL: norm1000), as the modules' own default."""
    return box_frame if box_frame is not None else family_of(model).box_frame


@torch.no_grad()
def predict_records(model: PreTrainedModel, processor: ProcessorMixin, samples: list[Sample], max_new_tokens: int = 64,
                    box_frame: str | None = None) -> list[dict]:
    """One JSON-ready dict per sample: id, source, task (the row's ``reward_method``, else
    "default"), prompt, completion, its ``answer`` (the text
    the answer rewards read: inside the last ``<answer>`` tags, else after ``</think>``, else
    the whole text), ``truncated`` (no end of turn within ``max_new_tokens``: the answer may be
    cut short), the parsed boxes (``bbox_2d`` in original-image pixels, ``label``; [] when none
    parse), the image files (the image folder joined to the row's paths) and sizes (``box_frame``:
    the frame the model writes boxes in; None: its family's) and the solution (null for an
    unlabelled row)."""
    box_frame = frame_of(model, box_frame)
    rollout = greedy_rollout(model, processor, samples, max_new_tokens)
    out = []
    for sample, text, ctx, cut in zip(samples, rollout.completions, rollout.contexts, rollout.truncated.tolist()):
        boxes = predicted_boxes(text, ctx.image_size, ctx.input_size, box_frame) if ctx.image_size else []
        out.append({
            "id": sample.id if sample.written_id is None else sample.written_id,  # as the data wrote it
            "source": sample.source, "task": sample.task, "prompt": ctx.prompt, "completion": text,
            "answer": answer_text(text).strip(),
            "truncated": bool(cut),
            "boxes": [{"bbox_2d": [round(v, 2) for v in b.box], "label": b.label} for b in boxes],
            "images": list(sample.image_paths),  # the row's image files, in order (a picture shows the first)
            "image_sizes": [list(s) for s in sample.image_sizes],
            "input_sizes": [list(s) for s in ctx.input_sizes], "box_frame": box_frame,  # the completion's frame
            "solution": (None if not has_answer(sample.solution) else
                         sample.solution if isinstance(sample.solution, str) else json.dumps(sample.solution)),
        })
    return out

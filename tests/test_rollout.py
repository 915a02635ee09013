"""Rollout correctness on tiny real Qwen-VL models: the loss scores what was sampled."""

import copy
import dataclasses

import pytest
import torch

from lit_vr1.config import SamplingConfig
from lit_vr1.generation import encode_prompts, generate, image_layout
from lit_vr1.loss import sampling_logits, token_logprobs
from lit_vr1.models.families import select_rows, vision_token_ids
from lit_vr1.scoring import logprobs


def _mixed_length_samples(samples):
    """Two prompts of different lengths, so left padding is exercised."""
    a, b = copy.copy(samples[0]), copy.copy(samples[1])
    b.messages = copy.deepcopy(b.messages)
    b.messages[-1]["content"][-1]["text"] += " Be precise, and look at every shape carefully before you answer."
    return [a, b]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 20, 1.0), (1.3, 0, 0.9), (0.8, 30, 0.85)]
)
def test_training_logprobs_equal_sampling_distribution(request, samples, family, temperature, top_k, top_p):
    model, processor = request.getfixturevalue("tiny_qwen25" if family == "qwen2_5_vl" else "tiny_qwen2")
    cfg = SamplingConfig(temperature, top_p, top_k, max_completion_length=12, suppress_ids=vision_token_ids(processor))
    batch = _mixed_length_samples(samples)
    torch.manual_seed(0)
    r = generate(model, processor, batch, 3, cfg, with_sampling_logprobs=True)
    lens = r.prompt["attention_mask"].sum(dim=1)
    assert lens[0] != lens[-1], "prompts of different lengths expected (left padding)"
    # the full forward, scored under the very distribution sampled from (top-k / top-p included)
    ours = logprobs(model, dataclasses.replace(r, scoring=cfg, shared_prompt=False), grad=False)
    ours = ours.masked_fill(r.completion_mask == 0, 0.0)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, r.sampling_logprobs, rtol=0, atol=1e-4)


def test_forward_without_mm_token_type_ids_scores_another_distribution(tiny_qwen25, samples):
    """The pitfall the rollout guards against: Qwen2.5-VL silently falls back to 1-D positions."""
    model, processor = tiny_qwen25
    cfg = SamplingConfig(max_completion_length=12, suppress_ids=vision_token_ids(processor))
    torch.manual_seed(0)
    r = generate(model, processor, _mixed_length_samples(samples), 2, cfg, with_sampling_logprobs=True)
    inputs = r.model_inputs()
    inputs.pop("mm_token_type_ids")
    with torch.no_grad():
        logits = model(**inputs, use_cache=False, logits_to_keep=r.completion_ids.shape[1] + 1).logits[:, :-1]
    dist = sampling_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, cfg.suppress_ids)
    wrong = token_logprobs(dist, r.completion_ids).masked_fill(r.completion_mask == 0, 0.0)
    assert (wrong - r.sampling_logprobs).abs().max() > 1e-3


def test_no_vision_placeholder_is_ever_generated(tiny_qwen25, samples):
    model, processor = tiny_qwen25
    banned = vision_token_ids(processor)
    assert len(banned) == 5
    cfg = SamplingConfig(temperature=2.0, max_completion_length=40, suppress_ids=banned)
    torch.manual_seed(0)
    r = generate(model, processor, samples[:4], 4, cfg)
    assert not torch.isin(r.completion_ids, torch.tensor(banned)).any()


def test_completion_mask_and_truncation(tiny_qwen25, samples):
    model, processor = tiny_qwen25
    cfg = SamplingConfig(max_completion_length=30, suppress_ids=vision_token_ids(processor))
    torch.manual_seed(0)
    r = generate(model, processor, samples[:4], 4, cfg)
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for ids, mask, trunc in zip(r.completion_ids, r.completion_mask, r.truncated):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any()  # contiguous from the start
        if trunc:
            assert n == ids.shape[0] and eos not in ids.tolist()
        else:
            assert ids[n - 1] == eos and eos not in ids[: n - 1].tolist()
    assert len(r.contexts) == 16 and r.contexts[0].input_sizes == [(112, 112)]


def test_select_rows_slices_pixel_values(tiny_qwen25, samples):
    """Rows picked out of a batch give the same logits as when run in the full batch."""
    model, processor = tiny_qwen25
    batch = [samples[0], samples[1], samples[2]]
    inputs, per_row = encode_prompts(processor, batch)
    image_rows, _ = image_layout(processor, inputs, [s for x in batch for s in x.image_sizes])
    with torch.no_grad():
        full = model(**inputs).logits
        rows = torch.tensor([2, 0])
        part = model(**select_rows(inputs, per_row, rows, image_rows)).logits
    torch.testing.assert_close(part, full[rows], atol=1e-4, rtol=0)

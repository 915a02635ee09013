"""Shared-prompt passes (lit_vr1.shared_prompt): each prompt runs once for its G completions
and gives the same logits, gradients and samples as the full prompt + completion forward."""

import copy
import dataclasses

import pytest
import torch
from helpers import count_tensor_reads

from lit_vr1 import shared_prompt
from lit_vr1.config import SamplingConfig
from lit_vr1.generation import encode_prompts, generation_config, image_layout
from lit_vr1.rollout import Rollout
from lit_vr1.scoring import distribution_logits, logprobs


def make_batch(model_and_processor, samples, n_prompts=3, width=7, seed=0):
    """P prompts of different lengths, and G=2 completions each of random tokens with EOS at
    different places (one without EOS)."""
    model, processor = model_and_processor
    picked = copy.deepcopy(samples[:n_prompts])  # the fixture is shared by the whole session: never edit it
    picked[1].messages[-1]["content"][-1]["text"] += " and tell me more words please"  # a longer prompt: padding
    prompt, per_prompt = encode_prompts(processor, picked)
    image_rows, _ = image_layout(processor, prompt, [s for x in picked for s in x.image_sizes])
    g = torch.Generator().manual_seed(seed)
    n = 2 * n_prompts
    ids = torch.randint(20, 400, (n, width), generator=g)
    lengths = torch.tensor([width, 3, 5, 1, width, 4])[:n]
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    return model.eval(), rollout_of(prompt, per_prompt, image_rows, ids, mask, group_size=2)


def rollout_of(prompt, per_prompt, image_rows, ids, mask, group_size, scoring=None) -> Rollout:
    """A rollout of the given completions (G per prompt), scored with shared prompts."""
    return Rollout(prompt=prompt, images_per_row=per_prompt, completion_ids=ids, completion_mask=mask,
                   truncated=torch.zeros(len(ids), dtype=torch.bool), completions=[""] * len(ids), contexts=[],
                   scoring=scoring or SamplingConfig(), group_size=group_size, image_rows=image_rows, shared_prompt=True)


def full_logits(model, rollout, rows=None):
    """The (prompt + completion) forward, one sequence per row."""
    rows = torch.arange(len(rollout)) if rows is None else rows
    return distribution_logits(model, dataclasses.replace(rollout, shared_prompt=False), rows)


@pytest.fixture(scope="module")
def tiny_qwen3():
    from lit_vr1.models.tiny import build_tiny

    return build_tiny("qwen3_vl", seed=0)


@pytest.mark.parametrize("family", ["tiny_qwen25", "tiny_qwen2", "tiny_qwen3"])
@pytest.mark.parametrize("reuse", [False, True])
def test_shared_prompt_logits_equal_the_full_forward(family, reuse, samples, request):
    model, r = make_batch(request.getfixturevalue(family), samples)
    feats = shared_prompt.image_features(model, r.prompt, r.images_per_row) if reuse else None
    assert (feats is None) == (not reuse or family == "tiny_qwen3")  # no DeepStack features handed back
    every = torch.arange(len(r))
    with torch.no_grad():
        want = full_logits(model, r)
        got = shared_prompt.completion_logits(model, r, every, feats)
        # a micro-batch: some rows of some prompts, out of order, one prompt twice
        sub = torch.tensor([5, 1, 0, 4])
        part = shared_prompt.completion_logits(model, r, sub, feats)
    valid = r.completion_mask.bool()
    assert got.shape == want.shape
    assert (got - want)[valid].abs().max() < 2e-5
    assert (part - want[sub])[valid[sub]].abs().max() < 2e-5


def test_features_are_not_handed_to_a_transformers_that_drops_them(tiny_qwen25, samples, monkeypatch):
    """transformers 5.0-5.17 took no mm_encoder_outputs: its **kwargs swallowed the features while
    the pixels were left out, and every frozen-tower or LoRA pass ran image-blind (logits off by
    0.5-1.0; a trial of the oldest declared versions). Such a model gets no features: its tower runs
    on the pixels in each pass, and the logits are the full forward's."""
    model, r = make_batch(tiny_qwen25, samples)
    assert shared_prompt.takes_encoder_outputs(type(model))  # this transformers takes them
    monkeypatch.setattr(shared_prompt, "takes_encoder_outputs", lambda model_class: False)
    assert shared_prompt.image_features(model, r.prompt, r.images_per_row) is None
    with torch.no_grad():
        got = shared_prompt.completion_logits(model, r, torch.arange(len(r)), None)
        want = full_logits(model, r)
    assert (got - want)[r.completion_mask.bool()].abs().max() < 2e-5


def test_shared_prompt_gradients_equal_the_full_forward(tiny_qwen25, samples):
    model, r = make_batch(tiny_qwen25, samples)
    ids = r.completion_ids
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1)) * r.completion_mask

    def grads(fn):
        model.zero_grad(set_to_none=True)
        logits = fn()
        lp = logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]
        (lp * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want = grads(lambda: full_logits(model, r))
    got = grads(lambda: shared_prompt.completion_logits(model, r, torch.arange(len(r))))
    assert want.keys() == got.keys() and any("visual" in n for n in got)  # the tower got its gradient too
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)


def test_greedy_sampling_equals_transformers_generate(tiny_qwen25, samples):
    model, processor = tiny_qwen25
    model.eval()
    prompt, per_prompt = encode_prompts(processor, samples[:2])
    cfg = SamplingConfig(max_completion_length=12, greedy=True)
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = processor.tokenizer.pad_token_id
    got = shared_prompt.sample(model, prompt, 2, cfg, [eos], pad)
    rep, _ = encode_prompts(processor, samples[:2], repeat=2)
    saved = model.generation_config
    model.generation_config = generation_config(cfg, processor, eos)
    try:
        out = model.generate(**rep)
    finally:
        model.generation_config = saved
    want = out[:, rep["input_ids"].shape[1]:]
    assert torch.equal(got.completion_ids[:, : want.shape[1]], want.masked_fill(got.mask[:, : want.shape[1]] == 0, pad))


def test_sampled_logprobs_are_those_the_loss_scores(tiny_qwen25, samples):
    """Sampling with temperature and top-k: the log-probs recorded while sampling equal the
    ones the training forward computes for the same tokens."""
    model, processor = tiny_qwen25
    model.eval()
    prompt, per_prompt = encode_prompts(processor, samples[:2])
    image_rows, _ = image_layout(processor, prompt, [s for x in samples[:2] for s in x.image_sizes])
    cfg = SamplingConfig(temperature=0.7, top_k=50, max_completion_length=10)
    torch.manual_seed(0)
    s = shared_prompt.sample(model, prompt, 3, cfg, [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")],
                             processor.tokenizer.pad_token_id, with_logprobs=True)
    # scored under the sampled distribution itself (top-k cut included), by the full forward
    r = dataclasses.replace(rollout_of(prompt, per_prompt, image_rows, s.completion_ids, s.mask, 3, cfg),
                            shared_prompt=False)
    lp = logprobs(model, r, grad=False).masked_fill(s.mask == 0, 0.0)
    assert (lp - s.logprobs).abs().max() < 1e-4
    assert len({tuple(r.tolist()) for r in s.completion_ids}) > 1  # sampled, not all alike


class TowerCalls:
    """Counts the images each call of a vision tower encodes."""

    def __init__(self, model):
        self.images = []
        model.model.visual.register_forward_hook(
            lambda mod, args, kwargs, out: self.images.append(int(kwargs["grid_thw"].shape[0])), with_kwargs=True)


@pytest.mark.parametrize("frozen", [False, True])
def test_each_image_is_encoded_once_per_pass_and_once_per_rollout_when_frozen(frozen, samples):
    """4 prompts x G=4, beta > 0, two optimiser steps per rollout (old, reference and policy
    passes). Repeating prompts would encode 16 images in every pass."""
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from tests.helpers import fit

    grpo = GRPOConfig(num_generations=4, max_completion_length=6, beta=0.04, mini_batch_size=8, micro_batch_size=4)
    module = GRPOModule(model="tiny:qwen2_5_vl", grpo=grpo, freeze_vision=frozen, freeze_merger=frozen)
    module.configure_model()
    policy, ref = TowerCalls(module.policy), TowerCalls(module.ref_model)
    fit(module, samples[:4], max_steps=2, batch_size=4)
    if frozen:  # the rollout's features serve the old, reference and both policy passes
        assert policy.images == [4] and ref.images == []
    else:  # rollout: 4; old and reference passes over the first iteration's micro-batches, then the policy's:
        # whole groups, so each micro-batch of 4 rows holds one prompt and encodes its one image
        assert policy.images == [4] + [1] * 8  # rollout, old pass (4 micro-batches), update (4 micro-batches)
        assert ref.images == [1, 1, 1, 1]


def test_loop_logits_are_the_same_with_and_without_shared_prompts(samples):
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    module = GRPOModule(model="tiny:qwen2_5_vl", grpo=GRPOConfig(num_generations=3, max_completion_length=8),
                        freeze_vision=True, freeze_merger=True)
    module.configure_model()
    torch.manual_seed(0)
    rollout = module.loop.rollout(samples[:3])
    assert rollout.prompt["input_ids"].shape[0] == 3 and len(rollout) == 9  # prompts encoded once
    rows = torch.tensor([7, 0, 4, 5])
    assert rollout.shared_prompt and rollout.image_features is not None  # the tower is frozen: features kept
    shared = logprobs(module.policy, rollout, rows, grad=False)
    repeated = logprobs(module.policy, dataclasses.replace(rollout, shared_prompt=False), rows, grad=False)
    valid = rollout.completion_mask[rows].bool()
    assert (shared - repeated)[valid].abs().max() < 2e-5


def _padded_prompts(processor, samples):
    picked = copy.deepcopy(samples[:2])
    picked[1].messages[-1]["content"][-1]["text"] += " and tell me more words please"  # padding in row 0
    prompt, _ = encode_prompts(processor, picked)
    assert not bool(prompt["attention_mask"].all())
    return prompt


def _draw(model, prompt, eos_ids, pad, width=16):
    torch.manual_seed(0)
    return shared_prompt.sample(model, prompt, 3, SamplingConfig(temperature=0.9, max_completion_length=width),
                                eos_ids, pad, with_logprobs=True)


def _same(a, b):
    return (torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.mask, b.mask)
            and torch.equal(a.logprobs, b.logprobs))


@pytest.mark.parametrize("padded", [True, False])
def test_decode_steps_get_the_mask_transformers_would_build(tiny_qwen25, samples, monkeypatch, padded):
    """The sampler hands each decoding step a ready mask (None without padding, else the 4D
    boolean one); the samples equal those drawn with the 2D mask transformers turns into it."""
    model, processor = tiny_qwen25
    model.eval()
    prompt = _padded_prompts(processor, samples) if padded else encode_prompts(processor, samples[:1])[0]
    eos, pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id
    ready = _draw(model, prompt, [eos], pad)
    assert int(ready.mask.sum(dim=1).max()) > 4  # several decoding steps ran
    masks = shared_prompt.decode_masks(model, prompt["attention_mask"].repeat_interleave(3, 0), 16)
    assert (masks(20) is None) != padded and (not padded or masks(20).shape == (3 * len(prompt["input_ids"]), 1, 1, 20))
    monkeypatch.setattr(shared_prompt, "decode_masks", lambda model, prompt_mask, width: (
        lambda length: torch.cat([prompt_mask, prompt_mask.new_ones(len(prompt_mask), width)], 1)[:, :length]))
    assert _same(ready, _draw(model, prompt, [eos], pad))


def test_checking_for_the_end_every_few_steps_gives_the_same_samples(tiny_qwen25, samples, monkeypatch):
    """Off the CPU the decode loop reads whether every row has ended every CHECK_EVERY steps; the
    steps it decodes past the last end hold pads only and are trimmed, so the completions, masks
    and log-probs are those of a loop that checks every step (forced here on the CPU)."""
    model, processor = tiny_qwen25
    model.eval()
    prompt = _padded_prompts(processor, samples)
    pad = processor.tokenizer.pad_token_id
    ends = list(range(30, 300))  # many end tokens: every row ends within a few steps
    every_step = _draw(model, prompt, ends, pad)
    assert bool(every_step.has_eos.all()) and every_step.completion_ids.shape[1] < 16
    monkeypatch.setitem(shared_prompt.CHECK_EVERY, "cpu", 8)
    assert _same(every_step, _draw(model, prompt, ends, pad))


def test_a_decoding_step_reads_no_tensor_values(tiny_qwen25, samples, monkeypatch):
    """Per decoded token at most the every-CHECK_EVERY end check reads a tensor's value
    (each read waits for a GPU): transformers' per-step padding check is gone."""
    model, processor = tiny_qwen25
    model.eval()
    prompt = _padded_prompts(processor, samples)
    eos, pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id
    monkeypatch.setitem(shared_prompt.CHECK_EVERY, "cpu", 8)
    reads = count_tensor_reads(monkeypatch)
    # the decode loop alone: the prefill (the vision tower's and M-RoPE's reads) runs before it
    forward = shared_prompt.prompt_pass

    def prefill(*args, **kwargs):
        out = forward(*args, **kwargs)
        reads["n"] = 0
        return out

    monkeypatch.setattr(shared_prompt, "prompt_pass", prefill)
    out = _draw(model, prompt, [eos], pad, width=32)
    steps = out.completion_ids.shape[1]
    assert steps == 32  # no row ended: every step ran
    assert reads["n"] <= steps // 8 + 2, reads  # 4 end checks, the padding check and the trim

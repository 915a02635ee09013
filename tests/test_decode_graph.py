"""The static decoding cache (lit_vr1.decode_graph): the fixed-size cache the CUDA graph replays
samples what the growing cache samples. On the CPU the step runs eagerly (the same function the
graph records); on a GPU the captured graph is checked too."""

import pytest
import torch

from lit_vr1 import decode_graph, shared_prompt
from lit_vr1.config import GRPOConfig, SamplingConfig
from lit_vr1.generation import encode_prompts


def _prompts(processor, samples, padded=True):
    import copy

    picked = copy.deepcopy(samples[:2])
    if padded:
        picked[1].messages[-1]["content"][-1]["text"] += " and tell me more words please"
    prompt, _ = encode_prompts(processor, picked)
    return prompt


def _draw(model, prompt, cfg, eos, pad, static, seed=0):
    torch.manual_seed(seed)
    return shared_prompt.sample(model, prompt, 3, cfg, eos, pad, with_logprobs=True, static=static)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("greedy", [True, False])
def test_the_static_cache_samples_what_the_growing_cache_samples(tiny_qwen25, samples, padded, greedy):
    model, processor = tiny_qwen25
    model.eval()
    prompt = _prompts(processor, samples, padded)
    eos, pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id
    cfg = SamplingConfig(temperature=0.9, top_k=50, max_completion_length=24, greedy=greedy, suppress_ids=(eos,))
    growing = _draw(model, prompt, cfg, [eos], pad, static=False)
    fixed = _draw(model, prompt, cfg, [eos], pad, static=True)
    assert growing.completion_ids.shape == (6, 24)  # the end of turn suppressed: every step ran
    assert torch.equal(growing.completion_ids, fixed.completion_ids)
    assert torch.equal(growing.mask, fixed.mask)
    assert (growing.logprobs - fixed.logprobs).abs().max() < 1e-5
    assert len({tuple(r.tolist()) for r in fixed.completion_ids}) > 1


def test_the_static_cache_ends_rows_at_their_end_of_turn(tiny_qwen25, samples):
    """Many end tokens: rows end at different steps, and the loop stops once all have."""
    model, processor = tiny_qwen25
    model.eval()
    prompt = _prompts(processor, samples)
    ends, pad = list(range(30, 300)), processor.tokenizer.pad_token_id
    cfg = SamplingConfig(temperature=0.9, max_completion_length=16)
    growing, fixed = (_draw(model, prompt, cfg, ends, pad, static=s) for s in (False, True))
    assert bool(fixed.has_eos.all()) and fixed.completion_ids.shape[1] < 16
    assert torch.equal(growing.completion_ids, fixed.completion_ids) and torch.equal(growing.mask, fixed.mask)


def test_the_static_layer_writes_one_position_and_returns_the_whole_buffer():
    keys, values = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    write_at = torch.tensor([3])
    layer = decode_graph.StaticLayer(keys, values, capacity=6, write_at=write_at)
    new_k, new_v = torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4)
    k, v = layer.update(new_k, new_v)
    assert k.shape == (2, 1, 6, 4) and torch.equal(k[:, :, :3], keys) and torch.equal(k[:, :, 3:4], new_k)
    assert torch.equal(v[:, :, 3:4], new_v) and not k[:, :, 4:].any()
    with pytest.raises(RuntimeError, match="one token per step"):
        layer.update(torch.randn(2, 1, 2, 4), torch.randn(2, 1, 2, 4))


def test_auto_mode_keeps_the_growing_cache_off_cuda(tiny_qwen25, samples, monkeypatch):
    """On the CPU the automatic choice is the growing cache (attending to the whole fixed cache
    costs more there, and there is no launch overhead to save); the refusal reasons read right."""
    model, processor = tiny_qwen25
    built = []
    original = decode_graph.StaticDecoder
    monkeypatch.setattr(decode_graph, "StaticDecoder", lambda *a, **k: built.append(1) or original(*a, **k))
    prompt = _prompts(processor, samples)
    eos, pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id
    shared_prompt.sample(model.eval(), prompt, 2, SamplingConfig(max_completion_length=4), [eos], pad)
    assert built == []
    assert "CUDA graphs need CUDA" in decode_graph.can_capture(model, torch.device("cpu"))


def test_suppressed_tokens_are_copied_to_the_device_once_per_rollout(tiny_qwen25, samples, monkeypatch):
    """A copy of a Python list to a GPU waits for the GPU: the suppressed ids are made a tensor once."""
    model, processor = tiny_qwen25
    prompt = _prompts(processor, samples)
    eos, pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id
    made = []
    original = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda data, *a, **k: made.append(data) or original(data, *a, **k))
    out = shared_prompt.sample(model.eval(), prompt, 2, SamplingConfig(max_completion_length=12, suppress_ids=(eos, 7)),
                               [eos], pad)
    assert out.completion_ids.shape[1] == 12
    assert sum(1 for d in made if isinstance(d, tuple) and d == (eos, 7)) == 1


def test_the_grpo_setting_reaches_the_sampler():
    assert GRPOConfig().sampling().cuda_graph and not GRPOConfig(cuda_graph=False).sampling().cuda_graph


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("greedy", [True, False])
def test_the_captured_graph_samples_what_the_eager_steps_sample_on_cuda(samples, greedy):
    from lit_vr1.models.tiny import build_tiny

    model, processor = build_tiny("qwen2_5_vl", seed=0)
    model = model.cuda().eval()
    prompt = {k: v.cuda() for k, v in _prompts(processor, samples).items()}
    eos, pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id
    cfg = SamplingConfig(temperature=0.9, top_k=50, max_completion_length=24, greedy=greedy, suppress_ids=(eos,))
    captured = []
    original = decode_graph.StaticDecoder._first_and_capture
    decode_graph.StaticDecoder._first_and_capture = lambda self: (captured.append(self), original(self))[1]
    try:
        graph = _draw(model, prompt, cfg, [eos], pad, static=None)
    finally:
        decode_graph.StaticDecoder._first_and_capture = original
    assert captured and captured[0].graph is not None, captured[0].refused if captured else "no static decoder"
    growing = _draw(model, prompt, SamplingConfig(**{**cfg.__dict__, "cuda_graph": False}), [eos], pad, static=None)
    refuse = decode_graph.can_capture
    decode_graph.can_capture = lambda model, device: "forced off by the test"
    try:  # the same static cache, each step run eagerly: the graph replays exactly those kernels
        eager = _draw(model, prompt, cfg, [eos], pad, static=True)
    finally:
        decode_graph.can_capture = refuse
    assert torch.equal(graph.completion_ids, eager.completion_ids) and torch.equal(graph.logprobs, eager.logprobs)
    assert (graph.completion_ids == growing.completion_ids).float().mean() > 0.9


def test_turning_it_off_in_the_grpo_config_reaches_every_sampling_of_the_policy():
    """model.grpo.cuda_graph: false marks the policy, so validation and predict (which sample
    with their own settings) do not capture either."""
    from lit_vr1.grpo import GRPOModule

    off = GRPOModule(model="tiny:qwen2_5_vl", grpo=GRPOConfig(cuda_graph=False, beta=0.0))
    off.configure_model()
    assert decode_graph.can_capture(off.policy, torch.device("cuda")) == "model.grpo.cuda_graph is false"
    on = GRPOModule(model="tiny:qwen2_5_vl", grpo=GRPOConfig(beta=0.0))
    on.configure_model()
    assert decode_graph.can_capture(on.policy, torch.device("cuda")) is None

"""The in-place key/value cache of the sampler (lit_vr1.kv_cache): the same tensors and the
same samples as transformers' growing cache, and a clear error past its room."""

import pytest
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from lit_vr1 import kv_cache, shared_prompt
from lit_vr1.config import SamplingConfig
from lit_vr1.generation import encode_prompts


def test_a_preallocated_layer_holds_what_the_growing_layer_holds():
    g = torch.Generator().manual_seed(0)
    prompt_k, prompt_v = torch.randn(3, 2, 5, 4, generator=g), torch.randn(3, 2, 5, 4, generator=g)
    grow = DynamicLayer()
    grow.update(prompt_k, prompt_v)
    fixed = kv_cache.PreallocatedLayer(prompt_k, prompt_v, limit=9, chunk=1)  # grows 6 -> 7 -> 9
    for _ in range(4):
        k, v = torch.randn(3, 2, 1, 4, generator=g), torch.randn(3, 2, 1, 4, generator=g)
        want, got = grow.update(k, v), fixed.update(k, v)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
        assert fixed.get_seq_length() == grow.get_seq_length()
    assert fixed.capacity == 9
    with pytest.raises(RuntimeError, match="holds at most 9 positions; position 10"):
        fixed.update(k, v)


def test_transformers_cache_operations_act_on_the_buffers():
    """crop, row selection and reset as DynamicLayer does them, and the next update builds on them."""
    g = torch.Generator().manual_seed(1)
    k0, v0 = torch.randn(2, 1, 4, 3, generator=g), torch.randn(2, 1, 4, 3, generator=g)
    grow, fixed = DynamicLayer(), kv_cache.PreallocatedLayer(k0, v0, limit=10)
    grow.update(k0, v0)
    new = lambda: (torch.randn(2, 1, 1, 3, generator=g),) * 2
    for op in (lambda c: c.crop(-2), lambda c: c.batch_select_indices(torch.tensor([1, 0]))):
        op(grow)
        op(fixed)
        k, v = new()
        assert torch.equal(grow.update(k, v)[0], fixed.update(k, v)[0])
    fixed.reset()
    k, v = new()
    assert torch.equal(fixed.update(k, v)[0], k) and fixed.get_max_length() == 10


def test_reserve_converts_only_filled_full_attention_layers():
    cache = DynamicCache()
    assert kv_cache.reserve(cache, 4) == 0  # nothing filled yet: left alone
    cache.update(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4), layer_idx=0)
    assert kv_cache.reserve(cache, 4) == 1
    layer = cache.layers[0]
    assert isinstance(layer, kv_cache.PreallocatedLayer) and layer.capacity == 7 and cache.get_seq_length() == 3


@pytest.mark.parametrize("greedy", [True, False])
def test_sampling_into_the_preallocated_cache_gives_the_same_tokens(tiny_qwen25, samples, monkeypatch, greedy):
    model, processor = tiny_qwen25
    model.eval()
    prompt, _ = encode_prompts(processor, samples[:2])
    cfg = SamplingConfig(temperature=0.9, max_completion_length=12, greedy=greedy)
    eos, pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id

    def run():
        torch.manual_seed(0)
        return shared_prompt.sample(model, prompt, 3, cfg, [eos], pad, with_logprobs=True)

    calls = []
    reserve = kv_cache.reserve
    monkeypatch.setattr(kv_cache, "reserve", lambda cache, extra: calls.append(reserve(cache, extra)))
    with torch.no_grad():
        fast = run()
        monkeypatch.setattr(kv_cache, "reserve", lambda cache, extra: 0)  # transformers' growing cache
        slow = run()
    assert calls and calls[0] > 0  # the sampler did run on the preallocated layers ...
    assert int(fast.mask.sum(dim=1).max()) > 1  # ... and wrote decoded tokens into them
    assert torch.equal(fast.completion_ids, slow.completion_ids) and torch.equal(fast.mask, slow.mask)
    assert torch.equal(fast.logprobs, slow.logprobs)

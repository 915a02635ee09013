"""A key/value cache that grows in place while sampling.

transformers' ``DynamicLayer`` appends each decoded token with ``torch.cat``, which copies
the whole cache of every layer at every step: O(T * (Lp + T)) copies per layer over T
decoding steps. Here each layer's keys and values live in a buffer with room for the next
tokens, each new token is written in place, and the layer hands the model a view of the
filled part, so the attention sees exactly the tensors the growing cache would hold (the
sampled tokens are bit-identical; ``tests/test_kv_cache.py``). The room starts at
``CHUNK`` positions past the prompt and doubles when it runs out (never past the rollout's
limit), so a long ``max_completion_length`` whose answers end early does not hold its worst
case, and the copies are O(log T).

Measured (README, "Speed and memory"): on the quiet 2-core CPU the sampler alone gains
1.05-1.12x at 32-128 tokens; under load the copies cost far more (profiled beside another
2-thread job, ``torch.cat`` was 5.5 s of the sampler's 10.4 s of CPU time, 0.03 s of 3.7 s here).

Only plain ``DynamicLayer`` layers (full attention) are converted; any other kind (sliding
window, quantised) keeps transformers' own behaviour.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

CHUNK = 64  # positions of room past the prompt at first


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values (rows, heads, positions, head_dim) are the first
    ``length`` positions of buffers of ``capacity`` positions, growable up to ``limit``."""

    is_croppable = True

    def __init__(self, keys: Tensor, values: Tensor, limit: int, chunk: int = CHUNK) -> None:
        super().__init__()
        self.device, self.is_initialized, self.length, self.limit = keys.device, True, keys.shape[-2], limit
        self.prompt_length = self.length
        self._key_buffer, self._value_buffer = keys, values
        self._reallocate(min(limit, self.length + chunk))

    @property
    def capacity(self) -> int:
        return self._key_buffer.shape[-2]

    def _reallocate(self, capacity: int) -> None:
        keys, values = self._key_buffer, self._value_buffer
        self._key_buffer = keys.new_empty(*keys.shape[:-2], capacity, keys.shape[-1])
        self._value_buffer = values.new_empty(*values.shape[:-2], capacity, values.shape[-1])
        self._key_buffer[..., : self.length, :] = keys[..., : self.length, :]
        self._value_buffer[..., : self.length, :] = values[..., : self.length, :]
        self._expose()

    def _expose(self) -> None:
        self.keys = self._key_buffer[..., : self.length, :]
        self.values = self._value_buffer[..., : self.length, :]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self.limit:
            raise RuntimeError(f"the preallocated key/value cache holds at most {self.limit} positions; "
                               f"position {end} was asked for (reserve more with kv_cache.reserve)")
        if end > self.capacity:  # double the room past the prompt, up to the limit
            self._reallocate(min(self.limit, max(end, self.prompt_length + 2 * (self.capacity - self.prompt_length))))
        self._key_buffer[..., self.length : end, :] = key_states
        self._value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def get_max_length(self) -> int:
        return self.limit

    # transformers' other cache operations, on the buffers (the inherited ones would rebind
    # ``keys`` only, and the next update would bring the old state back)
    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, not {tokens_to_remove}")
        self.length = max(0, self.length + tokens_to_remove)
        self._expose()

    def reset(self) -> None:
        self.length = 0
        self._expose()

    def batch_select_indices(self, indices: Tensor) -> None:
        self._key_buffer = self._key_buffer.index_select(0, indices.to(self._key_buffer.device))
        self._value_buffer = self._value_buffer.index_select(0, indices.to(self._value_buffer.device))
        self._expose()

    reorder_cache = batch_select_indices

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.batch_select_indices(torch.arange(self._key_buffer.shape[0]).repeat_interleave(repeats))

    def offload(self) -> None:
        raise NotImplementedError("the sampler's preallocated key/value cache is not offloaded")

    prefetch = offload


def reserve(cache: DynamicCache, extra: int) -> int:
    """Let every full-attention layer of ``cache`` grow in place by up to ``extra`` positions;
    returns how many layers were converted (0 for a cache without plain layers)."""
    layers = getattr(cache, "layers", None) or []
    converted = 0
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            layers[i] = PreallocatedLayer(layer.keys, layer.values, layer.keys.shape[-2] + extra)
            converted += 1
    return converted

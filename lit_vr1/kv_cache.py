"""A key/value cache that grows in place while sampling.

transformers' ``DynamicLayer`` appends each decoded token with ``torch.cat``, which copies
the whole cache of every layer at every step: over T decoding steps the copies cost
O(T * (Lp + T)) per layer, and on the benchmark model (4 prompts x G=8, 64 tokens, 224 px)
they were more than half of the sampler's CPU time (profiled: 5.5 s of 10.4 s). Here each
layer's keys and values live in a buffer with room for every position the rollout can
reach, the new token is written in place, and the layer hands the model a view of the
filled part, so the attention sees exactly the tensors the growing cache would hold (the
sampled tokens are bit-identical; ``tests/test_kv_cache.py``).

Only plain ``DynamicLayer`` layers (full attention) are converted; any other kind (sliding
window, quantised) keeps transformers' own behaviour.
"""

from __future__ import annotations

from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values (rows, heads, positions, head_dim) are the first
    ``length`` positions of buffers of ``capacity`` positions."""

    def __init__(self, keys: Tensor, values: Tensor, capacity: int) -> None:
        super().__init__()
        filled = keys.shape[-2]
        self._key_buffer = keys.new_empty(*keys.shape[:-2], capacity, keys.shape[-1])
        self._value_buffer = values.new_empty(*values.shape[:-2], capacity, values.shape[-1])
        self._key_buffer[..., :filled, :] = keys
        self._value_buffer[..., :filled, :] = values
        self.device, self.is_initialized, self.length = keys.device, True, filled
        self._expose()

    @property
    def capacity(self) -> int:
        return self._key_buffer.shape[-2]

    def _expose(self) -> None:
        self.keys = self._key_buffer[..., : self.length, :]
        self.values = self._value_buffer[..., : self.length, :]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"the preallocated key/value cache holds {self.capacity} positions; "
                               f"position {end} was asked for (reserve more with kv_cache.reserve)")
        self._key_buffer[..., self.length : end, :] = key_states
        self._value_buffer[..., self.length : end, :] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values


def reserve(cache: DynamicCache, extra: int) -> int:
    """Give every full-attention layer of ``cache`` room for ``extra`` more positions, in
    place; returns how many layers were converted (0 for a cache without plain layers)."""
    layers = getattr(cache, "layers", None) or []
    converted = 0
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            layers[i] = PreallocatedLayer(layer.keys, layer.values, layer.keys.shape[-2] + extra)
            converted += 1
    return converted

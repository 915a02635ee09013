"""A key/value cache that gradient checkpointing may replay: shared prompts under
``model.gradient_checkpointing``.

The shared-prompt passes (:mod:`lit_vr1.shared_prompt`) run each prompt once and hand its
key/value cache, with its autograd graph, to the completion pass. Under activation
checkpointing (transformers' ``GradientCheckpointingLayer``, non-reentrant
``torch.utils.checkpoint``) a decoder layer's forward runs a second time in the backward pass
to rebuild the activations it did not keep, and that replay calls ``cache.update`` again: a
plain ``DynamicCache`` would append the layer's keys a second time, and attention would be
recomputed over twice the positions (wrong gradients, no error). So transformers drops the
cache of every checkpointed layer (``_can_checkpoint_with_cache = False``), and until
2026-12-06 lit-vr1 fell back to repeating each prompt G times under checkpointing.

:class:`ReplayCache` keeps, for each layer, the layer's state before the forward's one write;
a second ``update`` of that layer (the replay) writes into a copy of that state and returns
what the forward's write returned, computed again from the replayed keys and values by the same
operations, and leaves the cache as the forward left it. Each forward over the cache (the prompt
pass, then the completion pass over the selected rows) gets its own :class:`ReplayCache`
(:meth:`ReplayCache.fork`), so "a second write of a layer" means exactly "a replay".
:func:`keep_cache_under_checkpointing` then lets the checkpointed decoder layers keep it
(transformers >= 5.2x has the switch; without it the fallback stays).
"""

from __future__ import annotations

import copy

from torch import Tensor, nn
from transformers import DynamicCache

try:
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # transformers without checkpointed layer classes
    GradientCheckpointingLayer = None

SWITCH = "_can_checkpoint_with_cache"


class ReplayCache(DynamicCache):
    """A ``DynamicCache`` written once per layer per forward; a layer's second write (a
    checkpoint replay) returns the first write's keys and values again without storing them."""

    def __init__(self) -> None:
        super().__init__()
        self.before: dict[int, object] = {}  # layer index -> the layer as it was before this forward's write

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if layer_idx in self.before:  # the backward pass replays a checkpointed layer
            return copy.copy(self.before[layer_idx]).update(key_states, value_states, *args, **kwargs)
        if self.layer_class_to_replicate is not None:
            while len(self.layers) <= layer_idx:
                self.layers.append(self.layer_class_to_replicate())
        self.before[layer_idx] = copy.copy(self.layers[layer_idx])
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def fork(self) -> ReplayCache:
        """A cache for the next forward over the same rows: the same keys and values (shared,
        with their graph), layers of its own, no write yet."""
        new = ReplayCache()
        new.layers = [copy.copy(layer) for layer in self.layers]
        return new


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that transformers checkpoints (gradient checkpointing on)."""
    if GradientCheckpointingLayer is None:
        return []
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


def keep_cache_under_checkpointing(model: nn.Module) -> bool:
    """Let ``model``'s checkpointed layers keep the cache they are given (only
    :class:`ReplayCache` is given to a forward that trains); False when the installed
    transformers has no such switch (the layers then drop it, and shared prompts fall back)."""
    if GradientCheckpointingLayer is None or not hasattr(GradientCheckpointingLayer, SWITCH):
        return False
    for layer in checkpointed_layers(model):
        setattr(layer, SWITCH, True)
    return True


def cache_dropped(model: nn.Module) -> bool:
    """True when a checkpointed layer of ``model`` would drop its key/value cache."""
    return any(not getattr(layer, SWITCH, False) for layer in checkpointed_layers(model))

"""The sampler's decoding step over a fixed-size key/value cache, replayed from a CUDA graph.

On a GPU a decoding step of a 3B model costs the host far more than the device: transformers'
forward launches hundreds of kernels from Python for each token (measured on one H200, 16 rows
of a Qwen2.5-VL-3B: 29-41 ms per step, where reading its bf16 weights once takes about 2 ms).
A CUDA graph records the step's kernels once and replays them with one launch
(``torch.cuda.CUDAGraph``; the static-cache decoding of vLLM and of transformers'
``cache_implementation="static"``). A graph replays fixed addresses and shapes, so here:

- each layer's keys and values live in buffers as long as the whole rollout (prompt + most
  completion tokens); the step writes the new token's at a position held in a device tensor
  (``index_copy_``) and attention reads every position under a boolean mask (N, 1, 1, C) whose
  entry for the new position the step sets itself;
- the step reads its token, M-RoPE position ids and write position from fixed input buffers,
  which the host refreshes with kernels (no value is read back), and leaves the logits in a fixed
  output buffer.

Sampling (suppressed tokens, temperature, top-k / top-p, ``torch.multinomial``) stays outside
the graph, so the random draws are the eager loop's. Off CUDA the same step runs eagerly
(``tests/test_decode_graph.py`` checks on the CPU that it samples what the growing-cache loop
samples, bit for bit); on CUDA the graph replays exactly the eager static steps, while against
the growing cache the attention kernel can differ (the whole buffer under a mask), so bf16
logits may differ in their last bits: the same distribution, not always the same draws. A
capture the model refuses falls back to that eager step, with a warning. FSDP2 and ZeRO-3
models are not captured (their hooks gather weights on side streams at each forward).

Under Lightning's mixed precision the rollout runs in ``precision.cached_autocast``: the trained
weights' bf16 copies are cast before the capture (by the prefill and the first, eager step) and
the graph reads them; the graph is dropped when ``sample`` returns, inside that context, before
the copies are freed.

Shapes: N completion rows, Lp prompt positions (left-padded), C = Lp + most completion tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

REFUSED_ATTRIBUTE = "_lit_vr1_graph_refused"  # set on a model whose capture failed or was turned off


class StaticLayer(DynamicLayer):
    """Keys/values (N, heads, C, head_dim) whose first Lp positions hold the prompt; ``update``
    writes one token at ``write_at`` (a (1,) device tensor) and returns the whole buffers."""

    is_croppable = False

    def __init__(self, keys: Tensor, values: Tensor, capacity: int, write_at: Tensor) -> None:
        super().__init__()
        self.device, self.is_initialized, self.write_at = keys.device, True, write_at
        self.keys = keys.new_zeros(*keys.shape[:-2], capacity, keys.shape[-1])
        self.values = values.new_zeros(*values.shape[:-2], capacity, values.shape[-1])
        self.keys[..., : keys.shape[-2], :] = keys
        self.values[..., : values.shape[-2], :] = values
        self.length = keys.shape[-2]  # kept by the decoder, for transformers' get_seq_length

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if key_states.shape[-2] != 1:
            raise RuntimeError("the static decoding cache takes one token per step")
        # in the buffers' dtype: under autocast the prompt pass may have left float32 states where the
        # step makes bf16 ones, and the growing cache's torch.cat promotes them to float32 likewise
        self.keys.index_copy_(2, self.write_at, key_states.to(self.keys.dtype))
        self.values.index_copy_(2, self.write_at, value_states.to(self.values.dtype))
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.keys.shape[-2]


def static_cache(cache: DynamicCache, capacity: int, write_at: Tensor) -> list[StaticLayer] | None:
    """Turn every layer of ``cache`` (filled by the prompt pass) into a :class:`StaticLayer` of
    ``capacity`` positions, in place; None (cache untouched) when a layer is not a plain
    full-attention ``DynamicLayer``."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return None
    static = [StaticLayer(layer.keys, layer.values, capacity, write_at) for layer in layers]
    layers[:] = static
    return static


class StaticDecoder:
    """``step(token, t)``: the logits (N, V, float32) that follow feeding ``token`` (N,) as the
    completions' token ``t`` (0-based), over a static cache; replayed from a CUDA graph after the
    first step when ``capture``.

    ``forward(input_ids, attention_mask, position_ids)`` runs the model over the cache;
    ``prompt_mask`` (N, Lp); ``start`` (N,) the first completion token's position."""

    def __init__(self, forward: Callable[..., Tensor], layers: list[StaticLayer], write_at: Tensor,
                 prompt_mask: Tensor, start: Tensor, capacity: int, capture: bool) -> None:
        n, prompt_len = prompt_mask.shape
        self.forward, self.layers, self.write_at, self.prompt_len = forward, layers, write_at, prompt_len
        self.mask = torch.zeros(n, 1, 1, capacity, dtype=torch.bool, device=prompt_mask.device)
        self.mask[:, 0, 0, :prompt_len] = prompt_mask.bool()
        self.start = start[None, :, None].expand(3, -1, 1).contiguous()  # (3, N, 1): text has one position
        self.positions = self.start.clone()
        self.token = torch.zeros(n, 1, dtype=torch.long, device=prompt_mask.device)
        self.capture, self.graph, self.logits = capture, None, None
        self.refused: str | None = None

    def _step(self) -> Tensor:
        """The step as recorded: the mask admits the new position, the model writes its keys there."""
        self.mask.index_fill_(-1, self.write_at, True)
        return self.forward(self.token, self.mask, self.positions).float()

    def step(self, token: Tensor, t: int) -> Tensor:
        self.token.copy_(token[:, None])
        self.write_at.fill_(self.prompt_len + t)
        torch.add(self.start, t, out=self.positions)
        for layer in self.layers:  # what the growing cache would report before this step's update (only
            layer.length = self.prompt_len + t  # eager steps read it; nothing in the captured forward may)
        if self.graph is not None:
            self.graph.replay()
            return self.logits
        if not self.capture:
            return self._step()
        return self._first_and_capture()

    def _first_and_capture(self) -> Tensor:
        """Run this step eagerly on a side stream (the warm-up PyTorch asks for before a capture),
        then record the step for the next ones."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            logits = self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.capture = False
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.logits = self._step()
        except Exception as exc:  # noqa: BLE001 - the eager step still samples the same tokens
            # a capture that fails in capture_end leaves the capture stream current: go back
            torch.cuda.set_stream(stream)
            self.refused = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            torch.cuda.synchronize()
            return logits
        self.graph = graph
        return logits


def model_forward(model: nn.Module, cache_argument: dict) -> Callable[..., Tensor]:
    """The decoding forward of ``model`` over the cache in ``cache_argument`` (``{name: cache}``):
    the last position's logits (N, V)."""

    def forward(input_ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        out = model(input_ids=input_ids, attention_mask=mask, **cache_argument, use_cache=True,
                    position_ids=positions, logits_to_keep=1)
        return out.logits[:, -1]

    return forward


def can_capture(model: nn.Module, device: torch.device) -> str | None:
    """Why the decoding step is not captured on ``device`` (None: it is)."""
    if device.type != "cuda":
        return f"a {device.type} device (CUDA graphs need CUDA)"
    if getattr(model, REFUSED_ATTRIBUTE, None):
        return getattr(model, REFUSED_ATTRIBUTE)
    # FSDP2's and ZeRO-3's hooks gather weights on side streams at each forward (also when the
    # weights are gathered for the whole rollout, as lit-vr1 does): not capturable
    if any(type(p).__name__ == "DTensor" or hasattr(p, "ds_id") for p in model.parameters()):
        return "sharded weights (FSDP2 or ZeRO-3)"
    if any(type(m).__name__.startswith("FSDP") for m in model.modules()):
        return "an FSDP2-wrapped model"
    return None


def turn_off(model: nn.Module, reason: str) -> None:
    """Never capture ``model``'s decoding step (its rollouts, validation and predictions)."""
    setattr(model, REFUSED_ATTRIBUTE, reason)


def note_refusal(model: nn.Module, reason: str) -> None:
    """Remember (and say once) that ``model``'s decoding step could not be captured."""
    setattr(model, REFUSED_ATTRIBUTE, f"an earlier capture failed ({reason})")
    warnings.warn(f"lit-vr1: the decoding step could not be captured as a CUDA graph ({reason}); "
                  "sampling goes on without it (model.grpo.cuda_graph: false turns the attempt off)", stacklevel=3)

"""Out of memory, said as a user can act on it.

torch's ``OutOfMemoryError`` names the bytes it tried to allocate and nothing of the run: which
pass of a GRPO step ran out (the rollout's decoding, the old / reference log-prob passes, the
policy's update, a validation), how large that pass was, and which option makes it smaller.
:func:`in_phase` wraps each pass and turns the error into :class:`OutOfMemory`, one message with
all three; the CLI prints it as one line, with where the fit resumes (:mod:`lit_vr1.cli`). An
out-of-memory error raised outside a wrapped pass (model loading, SFT) gets :func:`general`'s
message.

Sizes are the pass's own: rows x tokens, the float32 logits a scoring pass builds
(``rows x T x V x 4`` bytes: the LM head computes in float32, ``model.float32_lm_head``) and the
key/value cache a rollout fills (``2 x layers x kv_heads x head_dim x rows x tokens x bytes``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

GIB = 1024**3


class OutOfMemory(RuntimeError):
    """A pass of the run ran out of device memory; the message names the pass, its size and
    the options that make it smaller."""


@dataclass(frozen=True)
class TextShape:
    """What a pass's memory grows with, read from the language model's config."""

    layers: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, model: nn.Module) -> TextShape | None:
        config = getattr(model, "config", None)
        text = getattr(config, "text_config", None) or getattr(config, "llm_config", None) or config
        try:
            heads = text.num_attention_heads
            head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
            return cls(text.num_hidden_layers, getattr(text, "num_key_value_heads", None) or heads, head_dim,
                       text.vocab_size)
        except AttributeError:
            return None

    def logits_bytes(self, rows: int, tokens: int) -> int:
        """(rows, tokens, V) float32 logits."""
        return rows * tokens * self.vocab * 4

    def cache_bytes(self, rows: int, tokens: int, value_bytes: int) -> int:
        """Keys and values of every layer for ``rows`` sequences of ``tokens``."""
        return 2 * self.layers * self.kv_heads * self.head_dim * rows * tokens * value_bytes


def gib(n_bytes: float) -> str:
    """Bytes in GiB, MiB or KiB, whichever reads best."""
    for unit, size in (("GiB", GIB), ("MiB", 1024**2)):
        if n_bytes >= size:
            return f"{n_bytes / size:.2f} {unit}"
    return f"{n_bytes / 1024:.1f} KiB"


def device_memory(device: torch.device | str | None) -> str:
    """The device's total memory and this process's peak allocation on it (CUDA); "" elsewhere."""
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return ""
    try:
        _, total = torch.cuda.mem_get_info(device)
        peak = torch.cuda.max_memory_allocated(device)
    except RuntimeError:  # the error may leave the device unable to answer
        return ""
    return f"; {torch.device(device)} holds {gib(total)}, this process's peak allocation {gib(peak)}"


def message(phase: str, size: str, options: list[str], device: torch.device | str | None, cause: BaseException) -> str:
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return (f"out of memory in {phase} ({size}{device_memory(device)}): make it smaller with "
            + "; ".join(options) + f". torch said: {first}")


@contextmanager
def in_phase(phase: str, size: Callable[[], str], options: Callable[[], list[str]],
             device: torch.device | str | None = None) -> Iterator[None]:
    """Turn an ``OutOfMemoryError`` raised inside into :class:`OutOfMemory`; ``size`` and
    ``options`` are called only then."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(message(phase, size(), options(), device, exc)) from exc


GENERAL_OPTIONS = [
    "a smaller data.batch_size or model.grpo.micro_batch_size",
    "shorter completions (model.grpo.max_completion_length) or images (model.max_pixels)",
    "model.gradient_checkpointing: true, model.freeze_vision: true or model.lora",
    "several devices with trainer.strategy (FSDP2: configs/strategy/) to shard weights and optimiser state",
]


def general(exc: BaseException) -> OutOfMemory:
    """The message for an ``OutOfMemoryError`` outside the wrapped passes (loading, SFT)."""
    return OutOfMemory(message("this run", "the pass is not one lit-vr1 measures", GENERAL_OPTIONS, None, exc))


def find(exc: BaseException) -> BaseException | None:
    """The first ``OutOfMemoryError`` or :class:`OutOfMemory` in ``exc``'s chain, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (OutOfMemory, torch.OutOfMemoryError)):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


# -- the passes of a GRPO step --------------------------------------------------------------------
def value_bytes(model: nn.Module, device: torch.device | str) -> int:
    """Bytes of one key/value entry: 2 under 16-bit autocast, else the weights' own."""
    kind = torch.device(device).type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind).itemsize
    weight = next(model.parameters(), None)
    return weight.dtype.itemsize if weight is not None else 4


def rollout_size(shape: TextShape | None, prompts: int, group: int, tokens: int, entry_bytes: int) -> str:
    rows = prompts * group
    out = f"{prompts} prompts x G={group} = {rows} completions of up to {tokens} tokens"
    if shape is not None:
        out += f", whose key/value cache alone takes {gib(shape.cache_bytes(rows, tokens, entry_bytes))}"
    return out


def rollout_options(prompts: int, group: int, tokens: int, shared_prompt: bool) -> list[str]:
    out = [f"a smaller data.batch_size (prompts per rollout, now {prompts})",
           f"model.grpo.num_generations (now {group})",
           f"model.grpo.max_completion_length (now {tokens})",
           "model.max_pixels (fewer image tokens per prompt)"]
    if not shared_prompt:
        out.append("model.grpo.shared_prompt: true (each prompt's cache once for its G completions)")
    return out


def scoring_size(shape: TextShape | None, rows: int, tokens: int, what: str) -> str:
    out = f"{what} of {rows} completions x {tokens} tokens"
    if shape is not None:
        out += f", whose float32 logits alone take {gib(shape.logits_bytes(rows, tokens))}"
    return out


def scoring_options(rows: int, micro_batch_size: int | None, tokens: int, update: bool) -> list[str]:
    now = f"now {micro_batch_size}" if micro_batch_size else f"now null: all {rows} completions of a mini-batch at once"
    out = [f"model.grpo.micro_batch_size: {max(1, rows // 2)} or fewer ({now}"
           + ("; the gradients accumulate over the micro-batches, so the update is the same)" if update else ")"),
           f"model.grpo.max_completion_length (now {tokens})",
           "model.max_pixels (fewer image tokens per prompt)"]
    if update:
        out += ["model.gradient_checkpointing: true", "model.freeze_vision: true",
                "model.lora (adapters: no gradients or AdamW state for the base weights)",
                "FSDP2 over several devices (configs/strategy/) to shard weights, gradients and optimiser state"]
    return out

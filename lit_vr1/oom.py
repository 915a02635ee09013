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

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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


def memory_figures(device: torch.device | str | None) -> dict[str, float]:
    """This process's memory in GiB for a step's logged figures: on CUDA torch's allocation now
    and its peak since the process started (``memory/allocated_gib``, ``memory/peak_gib``);
    elsewhere the resident set now and its peak (``/proc/self/statm``, ``ru_maxrss``; Linux)."""
    try:
        if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
            now, peak = torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
        else:
            import resource

            with open("/proc/self/statm") as f:
                now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    except (OSError, ValueError, RuntimeError, ImportError):  # not Linux, or a device that cannot answer
        return {}
    # the kernel's high-water mark trails the resident count by a few hundred KiB: the peak is at least now
    return {"memory/allocated_gib": now / GIB, "memory/peak_gib": max(peak, now) / GIB}


def _local(t: torch.Tensor) -> torch.Tensor:
    return getattr(t, "_local_tensor", t)  # a DTensor (FSDP2): this process's shard


def _bytes_on(tensors, device: torch.device, seen: set[int]) -> int:
    total = 0
    for t in tensors:
        t = _local(t)
        if t.device != device or t.numel() == 0 or t.data_ptr() in seen:  # tied weights once
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class Held:
    """What this process holds on the device before any pass's activations (bytes): the
    policy's weights, the reference's, the gradients and the optimiser state."""

    policy: int
    reference: int
    gradients: int
    optimiser: int

    @property
    def total(self) -> int:
        return self.policy + self.reference + self.gradients + self.optimiser

    @classmethod
    def of(cls, policy: nn.Module, reference: nn.Module | None, optimisers, device: torch.device | str) -> Held:
        device, seen = torch.device(device), set()
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        weights = _bytes_on(policy.parameters(), device, seen)
        ref = _bytes_on(reference.parameters(), device, seen) if reference is not None else 0
        grads = _bytes_on((p.grad for p in policy.parameters() if p.grad is not None), device, seen)
        try:  # torch's optimisers; a wrapper without per-parameter state dicts (DeepSpeed's) counts none
            state = _bytes_on((v for opt in optimisers for st in opt.state.values() for v in st.values()
                               if isinstance(v, torch.Tensor)), device, seen)
        except (AttributeError, TypeError):
            state = 0
        return cls(weights, ref, grads, state)

    def __str__(self) -> str:
        parts = [f"policy weights {gib(self.policy)}"]
        if self.reference:
            parts.append(f"reference {gib(self.reference)}")
        parts += [f"gradients {gib(self.gradients) if self.gradients else 'none yet'}",
                  f"optimiser state {gib(self.optimiser) if self.optimiser else 'none yet'}"]
        return f"this process holds {gib(self.total)} before any activation: " + ", ".join(parts)


def held_by(module: Any) -> Held | None:
    """:class:`Held` for a lit-vr1 module (its policy, reference and its Trainer's optimisers);
    None under DeepSpeed, whose partitions, flat gradient buffers and float32 masters live outside
    the tensors counted here (the line would say 0 bytes of weights under ZeRO-3)."""
    from lit_vr1 import parallel

    if parallel.deepspeed_engine(module) is not None:
        return None
    trainer = getattr(module, "_trainer", None)
    return Held.of(module.policy, getattr(module, "ref_model", None), trainer.optimizers if trainer else [],
                   module.device)


# a resume keeps the model's settings and the data's order (lit_vr1.module.MODEL_IDENTITY, the data module's
# training_order): an option that changes them is for a new run, said where it is offered
NEW_MODEL = "a new run: a resume refuses another model"
NEW_ORDER = "a new run: a resume keeps the data's order"
STATIC_OPTIONS = [
    f"model.lora (the base frozen: no gradients or AdamW state for it, and no reference copy; {NEW_MODEL})",
    "FSDP2 over several devices (configs/strategy/) or DeepSpeed ZeRO to shard weights, gradients and optimiser state",
    f"model.freeze_vision: true ({NEW_MODEL})",
]
# the module attribute that is on when an option is taken already (LoRA freezes the vision tower too)
TAKEN = {"model.gradient_checkpointing": ("gradient_checkpointing",), "model.lora": ("lora",),
         "model.freeze_vision": ("freeze_vision", "lora")}


def not_taken(options: list[str], module: Any) -> list[str]:
    """``options`` without those ``module`` has taken already (gradient checkpointing, LoRA, a
    frozen tower): offering them again sent the user to flags that were set."""
    def taken(option: str) -> bool:
        return any(option.startswith(flag) and any(getattr(module, a, None) for a in attrs)
                   for flag, attrs in TAKEN.items())

    return [o for o in options if not taken(o)]


def message(phase: str, size: str, options: list[str], device: torch.device | str | None, cause: BaseException,
            held: Held | None = None) -> str:
    """One line: the pass, its size, what the process holds, the device, the options, torch's words.
    Where weights, gradients and optimiser state take half the device or more, the options that
    shrink them come first: no micro-batch fits beside them."""
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    held_text = f"; {held}" if held is not None and held.total else ""
    if held is not None and _mostly_held(held, device):  # reordered, never added to: taken options stay out
        options = [o for o in options if o in STATIC_OPTIONS] + [o for o in options if o not in STATIC_OPTIONS]
    return (f"out of memory in {phase} ({size}{held_text}{device_memory(device)}): make it smaller with "
            + "; ".join(options) + f". torch said: {first}")


def _mostly_held(held: Held, device: torch.device | str | None) -> bool:
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        return held.total >= torch.cuda.mem_get_info(device)[1] / 2
    except RuntimeError:
        return False


@contextmanager
def in_phase(phase: str, size: Callable[[], str], options: Callable[[], list[str]],
             device: torch.device | str | None = None, held: Callable[[], Held | None] | None = None) -> Iterator[None]:
    """Turn an ``OutOfMemoryError`` raised inside into :class:`OutOfMemory`; ``size``, ``options``
    and ``held`` are called only then."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(message(phase, size(), options(), device, exc, held() if held else None)) from exc


GENERAL_OPTIONS = [
    "in SFT a smaller data.batch_size with trainer.accumulate_grad_batches raised to match (the same batch per "
    f"optimiser step; {NEW_ORDER}), in GRPO model.grpo.micro_batch_size",
    "shorter completions (model.grpo.max_completion_length) or images (model.max_pixels)",
    "model.gradient_checkpointing: true, model.freeze_vision: true or model.lora",
    "several devices with trainer.strategy (FSDP2: configs/strategy/) to shard weights and optimiser state",
]


def general(exc: BaseException) -> OutOfMemory:
    """The message for an ``OutOfMemoryError`` outside the wrapped passes (loading, SFT)."""
    return OutOfMemory(message("this run", "the pass is not one lit-vr1 measures", GENERAL_OPTIONS, None, exc))


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
        out += (f", whose key/value cache takes {gib(shape.cache_bytes(rows, tokens, entry_bytes))} for the completion "
                "tokens alone (each of the rows holds its prompt's tokens too, image tokens included)")
    return out


def rollout_options(prompts: int, group: int, tokens: int, shared_prompt: bool) -> list[str]:
    out = [f"a smaller data.batch_size (prompts per rollout, now {prompts}; {NEW_ORDER})",
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
           + ("; the gradients accumulate over the micro-batches, so the update is the same)" if update else ")")
           ] if rows > 1 else []  # a micro-batch of one row is as small as it gets
    out += [f"model.grpo.max_completion_length (now {tokens})",
           "model.max_pixels (fewer image tokens per prompt)"]
    if update:
        out += ["model.gradient_checkpointing: true", *STATIC_OPTIONS]
    return out

"""LoRA adapters on the language model of a VLM, through peft.

``apply_lora(model, LoraSpec())`` wraps the model with low-rank adapters on the language
model's linear layers (attention q/k/v/o and MLP gate/up/down projections) and leaves every
other weight frozen; the vision tower and its merger get no adapter. The wrapped model
still generates and scores like the plain one, and with ``disable_adapter()`` it *is* the
base model again (so GRPO's reference needs no second copy).

``merged_state_dict`` gives the base model's weights with the adapters folded in, without
touching the live model, so ``save_merged`` writes a plain ``save_pretrained`` directory
that ``from_pretrained`` (and ``lit_vr1.models.loading.load_model``) reads like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lit_vr1.models.families import base_model, find_family
from lit_vr1.rules import enforce, named_fields_only, one_of, problems_of, refuse, rule

LORA_OPTION = "model.lora.target_modules"

# The language model's projections, by full module name: ``...language_model.<...>.q_proj`` etc.
# The vision tower of Qwen2.5-VL also has ``mlp.gate_proj`` / ``up_proj`` / ``down_proj``
# (under ``model.visual``), so the language model is selected by path, not by leaf name.
LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS = r"(.*\.)?language_model\.(.*\.)?(" + "|".join(LANGUAGE_PROJECTIONS) + r")"


@named_fields_only
@dataclass
class LoraSpec:
    """Low-rank adapters (peft LoRA) on the policy; every other weight is frozen.

    Args:
        r: rank of each adapter.
        alpha: scaling numerator: the update is ``(alpha / r) * B @ A``.
        dropout: dropout on the adapters' input while training (above 0 it keeps a dropped
            copy of each adapted layer's input for the backward pass: more activation
            memory, see ``benchmarks/memory.py``).
        target_modules: module names to adapt, matched as peft does: a module is adapted
            when its full name equals an entry or ends with ``.<entry>`` (``q_proj``,
            ``self_attn.o_proj``; one name alone is a list of one). Default (None): the
            language model's q/k/v/o and gate/up/down projections only, never the vision
            tower or the merger. ``"all-linear"`` (peft's shorthand): every linear layer but
            the output head, the vision tower's included.
        bias: which biases train as well: none, all, or lora_only.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | Literal["all-linear"] | None = None
    bias: Literal["none", "all", "lora_only"] = "none"

    def __post_init__(self) -> None:
        refuse(problems_of(self), "model.lora")


BIASES = ("none", "all", "lora_only")


@rule("model.lora.r", "config", on="LoraSpec")
def lora_rank_positive(spec: LoraSpec) -> str | None:
    return None if spec.r >= 1 else f"model.lora.r={spec.r} must be >= 1: the rank of each adapter (typically 8-64)"


@rule("model.lora.alpha", "config", on="LoraSpec")
def lora_alpha_positive(spec: LoraSpec) -> str | None:
    if spec.alpha > 0:
        return None
    return (f"model.lora.alpha={spec.alpha} must be > 0: the update is (alpha / r) * B @ A, so alpha 0 trains "
            "nothing (typically 2 x r)")


@rule("model.lora.dropout", "config", on="LoraSpec")
def lora_dropout_in_range(spec: LoraSpec) -> str | None:
    if 0 <= spec.dropout < 1:
        return None
    return f"model.lora.dropout={spec.dropout} must be in [0, 1): the share of the adapters' inputs dropped (0: none)"


@rule("model.lora.bias", "config", on="LoraSpec")
def lora_bias_known(spec: LoraSpec) -> str | None:
    return one_of("model.lora.bias", spec.bias, BIASES)


# a module's hyper-parameters (in every Lightning checkpoint) may hold a LoraSpec: let
# ``torch.load(weights_only=True)`` read it
torch.serialization.add_safe_globals([LoraSpec])


def _suffixes(names: list[str]) -> list[str]:
    """Every dotted suffix of every name (``a.b.c`` -> ``c``, ``b.c``, ``a.b.c``), each once;
    suffixes that start at a layer index (``0.mlp``) are left out as noise."""
    out: dict[str, None] = {}
    for name in names:
        parts = name.split(".")
        for i in range(len(parts) - 1, -1, -1):
            if not parts[i].isdigit() or i == len(parts) - 1:
                out[".".join(parts[i:])] = None
    return list(out)


def _linear_names(model: nn.Module) -> str:
    """The short names of the model's linear layers (``q_proj``, ``mlp.0``), each once."""
    out = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            parts = name.split(".")
            out.add(".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1])
    return ", ".join(sorted(out))


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def resolve_targets(model: nn.Module, spec: LoraSpec) -> str | list[str]:
    """peft's ``target_modules`` for ``spec`` on ``model``; a ValueError names every entry
    that matches no module of the model, with the closest module names."""
    names = [n for n, _ in model.named_modules() if n]
    if spec.target_modules == "all-linear":
        return "all-linear"
    if isinstance(spec.target_modules, str):  # one name (peft would read a string as a pattern)
        spec = dataclasses.replace(spec, target_modules=[spec.target_modules])
    if spec.target_modules is None:
        family = find_family(model)
        if family is not None and any(re.fullmatch(family.lora_target_regex, n) for n in names):
            return family.lora_target_regex  # the family's own: its language model's linears
    for check in (lora_default_targets_match, lora_targets_not_empty, lora_targets_match):
        enforce(check(model, spec.target_modules))
    return DEFAULT_TARGETS if spec.target_modules is None else list(spec.target_modules)


@rule("model.lora.target_modules", "config")
def lora_default_targets_match(model: nn.Module, targets: list[str] | None) -> str | None:
    if targets is not None or any(re.fullmatch(DEFAULT_TARGETS, n) for n, _ in model.named_modules() if n):
        return None
    return (f"{type(model).__name__} has no language_model.*.(q|k|v|o|gate|up|down)_proj module, so LoRA's "
            f"default targets match nothing; set {LORA_OPTION} to some of its linear layers: {_linear_names(model)}")


@rule("model.lora.target_modules", "config")
def lora_targets_not_empty(model: nn.Module, targets: list[str] | None) -> str | None:
    if targets is None or targets:
        return None
    return f"{LORA_OPTION} is empty; leave it unset for the language model's projections"


@rule("model.lora.target_modules", "config")
def lora_targets_match(model: nn.Module, targets: list[str] | None) -> str | None:
    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in targets or [] if not any(_matches(n, t) for n in names)]
    if not missing:
        return None
    candidates = _suffixes(names)
    hints = []
    for t in missing:
        close = difflib.get_close_matches(t, candidates, n=5, cutoff=0.6)
        hints.append(f"{t!r} (close: {', '.join(close)})" if close else f"{t!r}")
    return (f"{LORA_OPTION}: {'; '.join(hints)} match no module of {type(model).__name__}. "
            f"An entry matches a module whose name is the entry or ends with '.<entry>'; "
            f"the model's linear layers are named {_linear_names(model)}")


@functools.cache
def _lora_policy_class() -> type:
    """``LoraPolicy``, built on first use so that importing this file does not import peft."""
    from peft import PeftModel

    class LoraPolicy(PeftModel):
        """peft's ``PeftModel`` (what ``get_peft_model`` returns without a task type) whose
        ``generation_config`` is the base model's, read *and set*: ``generate`` runs the base
        model's ``generate``, which reads the base model's config, so a config set on a plain
        ``PeftModel`` wrapper would be ignored (the rollout would sample with the checkpoint's
        defaults instead of the configured temperature / top_p / max length)."""

        @property
        def generation_config(self):
            return self.get_base_model().generation_config

        @generation_config.setter
        def generation_config(self, value) -> None:
            self.get_base_model().generation_config = value

    LoraPolicy.__module__, LoraPolicy.__qualname__ = __name__, "LoraPolicy"
    globals()["LoraPolicy"] = LoraPolicy  # picklable by name
    return LoraPolicy


def __getattr__(name: str):
    if name == "LoraPolicy":
        return _lora_policy_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def apply_lora(model: nn.Module, spec: LoraSpec):
    """``model`` wrapped in a :class:`LoraPolicy` (a peft ``PeftModel``) with LoRA adapters per
    ``spec``, in place: the base weights are shared, not copied, and all of them are frozen."""
    try:
        from peft import LoraConfig
    except ModuleNotFoundError as e:  # absent; an installed peft that fails to import keeps its own error
        if e.name != "peft":
            raise
        raise ImportError("model.lora needs the peft package: pip install peft (or pip install 'lit-vr1[lora]')") \
            from None

    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=resolve_targets(model, spec), bias=spec.bias)
    return _lora_policy_class()(model, config)


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a peft model (holds adapters); False without peft installed (nothing can
    be one: an export of a plain model needed peft before)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Full name -> peft LoRA layer of every adapted module."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


# the share of the adapters' update (norm of what rounding lost over norm of the update) above
# which a merge warns: bf16 keeps 8 bits of mantissa, so an update much smaller than a weight's
# last bit rounds away (a new user's 3 steps at lr 1e-5: 88% of the adapted weights unchanged)
MERGE_LOSS_WARNING = 0.02


@dataclass
class MergeLoss:
    """How much of the adapters' update a merge kept: ``lost`` = ||merged - base - update|| /
    ||update|| over every adapted weight (0: all of it; 1: none), in ``dtype``."""

    lost: float
    dtype: torch.dtype


@torch.no_grad()
def merged_state_dict(model: nn.Module, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                      loss: list[MergeLoss] | None = None) -> dict[str, torch.Tensor]:
    """The base model's state dict with the active adapters folded into their layers, on
    ``device``; the live model is left as it is (no merge / unmerge round trip, so its base
    weights stay bit-identical). Each merged weight is ``base + update`` summed in float32 and
    rounded once, to ``dtype`` (default: the base weight's own); every other floating tensor is
    cast to ``dtype`` too when given. ``loss``: a list that receives the :class:`MergeLoss`.
    A model without adapters gives its own state dict."""
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    if not is_lora(model):
        return {k: cast(v.detach()).to(device) for k, v in model.state_dict().items()}
    base = base_model(model)
    merged: dict[str, torch.Tensor] = {}
    lost_sq = update_sq = 0.0
    for name, layer in lora_layers(base).items():
        weight = layer.get_base_layer().weight
        update = sum(layer.get_delta_weight(a).float() for a in layer.active_adapters if a in layer.lora_A)
        exact = weight.float() + update
        rounded = exact.to(dtype or weight.dtype)
        lost_sq += float((rounded.float() - exact).double().pow(2).sum())
        update_sq += float(torch.as_tensor(update).double().pow(2).sum())
        merged[f"{name}.weight"] = rounded.to(device)
    if loss is not None:
        loss.append(MergeLoss(math.sqrt(lost_sq / update_sq) if update_sq > 0 else 0.0,
                              (dtype or next(iter(merged.values())).dtype) if merged else torch.float32))
    out: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = merged[key] if key in merged else cast(value.detach()).to(device)
    return out


def process_umask() -> int:
    """The process's umask, read without changing it where Linux says it (``Umask:`` in
    /proc/self/status); elsewhere set and restored (not safe beside threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
        return mask


def as_umask_allows(folder: str, since: float) -> None:
    """Give the files written into ``folder`` since ``since`` the mode the process's umask allows
    (``-rw-r--r--`` under 022): transformers writes the weights through a private temporary
    file, so ``model.safetensors`` came out ``-rw-------`` beside ``-rw-r--r--`` processor files,
    unreadable to the others of a shared cluster (a new user's trial)."""
    mask = process_umask()
    for name in os.listdir(folder):
        file = os.path.join(folder, name)
        try:
            if os.path.isfile(file) and not os.path.islink(file) and os.stat(file).st_mtime >= since - 1:
                os.chmod(file, 0o666 & ~mask)
        except OSError:  # another's file, or gone meanwhile: left as it is
            continue


@contextlib.contextmanager
def bars_on_a_terminal_only():
    """transformers' "Writing model shards" bar off while stderr is not a terminal: in a
    redirected log it left ``\r``-joined bar frames (a new user's trial of unattended runs)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was and not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_merged(model: nn.Module, path: str, processor=None, dtype: str | torch.dtype | None = None) -> MergeLoss | None:
    """Write ``model`` (adapters merged in, when it has any) and ``processor`` to ``path``
    with ``save_pretrained``: a plain checkpoint that ``from_pretrained`` loads. ``dtype``
    (``"float32"``, ``"bfloat16"``, ...; default: the model's own) is the saved weights' and
    config's. Merging into bf16 / fp16 weights rounds the adapters' update: when more than
    :data:`MERGE_LOSS_WARNING` of it is lost a warning says how much and what to do. Returns
    the merge's :class:`MergeLoss` (None without adapters)."""
    os.makedirs(path, exist_ok=True)
    started = time.time()
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    target = base_model(model) if is_lora(model) else model
    found: list[MergeLoss] = []
    with bars_on_a_terminal_only():
        if is_lora(model) or dtype is not None:
            target.save_pretrained(path, state_dict=merged_state_dict(model, dtype=dtype, loss=found))
        else:  # nothing to merge or cast: the model writes its own weights (no copy of them all in host memory)
            target.save_pretrained(path)
    if dtype is not None:  # save_pretrained records the live model's dtype: from_pretrained(dtype="auto") reads this
        config_path = os.path.join(path, "config.json")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        config["dtype"] = str(dtype).removeprefix("torch.")
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
    if processor is not None:
        processor.save_pretrained(path)
    as_umask_allows(path, since=started)
    loss = found[0] if found else None
    if loss is not None and loss.lost > MERGE_LOSS_WARNING:
        kind = str(loss.dtype).removeprefix("torch.")
        warnings.warn(f"{path}: merging the LoRA adapters into {kind} weights rounded away {loss.lost:.0%} of their "
                      f"update (its norm; an update far below a weight's last {kind} bit is lost): the saved model is "
                      "closer to the base than the trained policy. Export in float32 (python -m lit_vr1.export "
                      "--dtype float32, MergedExport(dtype='float32'), module.export(path, dtype='float32'); "
                      "model.export_dir writes the policy's dtype: use MergedExport instead), or keep the adapters "
                      "apart (policy.save_pretrained(path) writes them alone)", stacklevel=2)
    return loss

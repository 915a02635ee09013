"""The reference model's weights under mixed precision (``lit_vr1.models.precision.store_cast_weights``).

Under ``bf16-mixed`` every reference pass runs under bf16 autocast, which casts each linear and
convolution weight to bf16 at every call; the reference stores those weights in bf16 instead:
half their bytes, the same log-probs to the last bit.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl"]


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_stored_in_bf16_give_the_same_logits_to_the_last_bit_under_autocast(family, samples):
    from lit_vr1.generation import encode_prompts
    from lit_vr1.models.precision import AUTOCAST_CAST_MODULES, float32_head, store_cast_weights
    from lit_vr1.models.tiny import build_tiny

    model, processor = build_tiny(family, seed=0)
    float32_head(model)
    model.eval()
    ref = copy.deepcopy(model)
    cast = sum(p.numel() for m in ref.modules() if type(m) in AUTOCAST_CAST_MODULES
               for p in m.parameters(recurse=False))
    before = sum(p.numel() * p.element_size() for p in ref.parameters())
    freed = store_cast_weights(ref, torch.bfloat16)
    assert freed == 2 * cast > 0
    assert sum(p.numel() * p.element_size() for p in ref.parameters()) == before - freed
    for m in ref.modules():  # embeddings, norms and the float32 head keep float32
        for p in m.parameters(recurse=False):
            assert p.dtype == (torch.bfloat16 if type(m) in AUTOCAST_CAST_MODULES else torch.float32), type(m)
    inputs, _ = encode_prompts(processor, samples[:3])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        want, got = model(**inputs).logits, ref(**inputs).logits
    assert want.dtype == torch.float32 and torch.equal(want, got)
    assert store_cast_weights(ref, torch.bfloat16) == 0  # stored once: nothing more to free


def test_a_weight_shared_with_another_module_is_left_float32():
    from lit_vr1.models.precision import store_cast_weights

    embed, head, proj = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False), nn.Linear(4, 4)
    head.weight = embed.weight  # a tied head
    freed = store_cast_weights(nn.ModuleList([embed, head, proj]), torch.bfloat16)
    assert head.weight.dtype == torch.float32 and proj.weight.dtype == proj.bias.dtype == torch.bfloat16
    assert freed == 2 * (16 + 4)


def _fit(samples, precision: str, store: bool, monkeypatch):
    from helpers import LengthReward, fit

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.models import precision as precision_module

    if not store:
        monkeypatch.setattr(precision_module, "store_cast_weights", lambda model, dtype: 0)
    torch.manual_seed(0)
    cfg = GRPOConfig(num_generations=4, max_completion_length=8, beta=0.04, gradient_clip_val=None)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], grpo=cfg,
                        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    rows = [m for _, m in fit(module, samples[:2], max_steps=3, precision=precision).rows if "train/loss" in m]
    monkeypatch.undo()
    return module, rows


def test_a_bf16_mixed_fit_stores_its_reference_in_bf16_and_logs_the_same_figures(samples, monkeypatch):
    from lit_vr1.models.precision import AUTOCAST_CAST_MODULES
    from lit_vr1.oom import Held

    module, rows = _fit(samples, "bf16-mixed", store=True, monkeypatch=monkeypatch)
    plain, plain_rows = _fit(samples, "bf16-mixed", store=False, monkeypatch=monkeypatch)
    linear = [p for m in module.ref_model.modules() if type(m) in AUTOCAST_CAST_MODULES
              for p in m.parameters(recurse=False)]
    assert linear and all(p.dtype == torch.bfloat16 for p in linear)
    assert all(p.dtype == torch.float32 for p in plain.ref_model.parameters())
    assert all(p.dtype == torch.float32 for p in module.policy.parameters())  # the trained weights stay float32
    assert rows[0]["train/kl"] == 0.0  # the first step's policy is its reference, to the last bit
    measured = ("train/time/", "train/memory/")  # wall times and resident memory: the machine's, not the run's
    figures = [{k: v for k, v in r.items() if not k.startswith(measured)} for r in rows]
    assert figures == [{k: v for k, v in r.items() if not k.startswith(measured)} for r in plain_rows]
    assert all(r["train/memory/peak_gib"] >= r["train/memory/allocated_gib"] > 0 for r in rows)
    assert any(r["train/kl"] > 0 for r in rows)  # every logged figure, a KL that moved included, to the last bit
    assert torch.equal(module.loop.last_rollout.ref_logprobs, plain.loop.last_rollout.ref_logprobs)
    for a, b in zip(module.policy.parameters(), plain.policy.parameters()):
        assert torch.equal(a, b)
    held, held_plain = (Held.of(m.policy, m.ref_model, [], "cpu") for m in (module, plain))
    assert held.reference == held_plain.reference - sum(p.numel() * 2 for p in linear)


def test_a_full_precision_fit_keeps_a_float32_reference(samples, monkeypatch):
    module, _ = _fit(samples, "32-true", store=True, monkeypatch=monkeypatch)
    assert all(p.dtype == torch.float32 for p in module.ref_model.parameters())


def test_a_later_fit_in_full_precision_gets_the_reference_back_in_float32(samples, monkeypatch):
    from helpers import fit

    module, _ = _fit(samples, "bf16-mixed", store=True, monkeypatch=monkeypatch)
    stored = {n: p.detach().clone() for n, p in module.ref_model.named_parameters()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = [m for _, m in fit(module, samples[:2], max_steps=1, precision="32-true").rows if "train/loss" in m]
    assert any("stored in torch.bfloat16 for an earlier fit" in str(w.message) for w in caught)
    assert rows and all(p.dtype == torch.float32 for p in module.ref_model.parameters())
    for n, p in module.ref_model.named_parameters():  # the values the bf16 fit ran, now in float32
        assert torch.equal(p, stored[n].float())


@pytest.mark.parametrize("strategy, precision, want", [
    ("ddp", "bf16-mixed", torch.bfloat16), ("ddp", "16-mixed", torch.float16), ("ddp", "32-true", None),
    ("ddp", "bf16-true", None),  # the whole model is bf16 already
    ("fsdp2", "bf16-mixed", None),  # FSDP2 shards groups of one dtype
    ("deepspeed", "bf16-mixed", None),  # DeepSpeed casts the whole module itself
])
def test_the_reference_is_stored_in_the_autocast_dtype_only_where_it_may_be(strategy, precision, want):
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    from lit_vr1.grpo import GRPOModule

    module = GRPOModule(model="tiny:qwen2_5_vl")
    kind = DeepSpeedStrategy if strategy == "deepspeed" else DDPStrategy
    module._trainer = SimpleNamespace(precision=precision, strategy=kind.__new__(kind))
    if strategy == "fsdp2":
        module._device_mesh = object()  # Lightning's ModelParallelStrategy gives the module its mesh
    assert module._reference_storage_dtype() == want


def test_a_checkpoints_bf16_reference_resumed_into_a_float32_one_is_said():
    from types import SimpleNamespace

    from lit_vr1.grpo import rounded_reference_note

    ref = nn.Sequential(nn.Linear(4, 4))
    fit = SimpleNamespace(state=SimpleNamespace(fn="fit"), precision="32-true")
    half = {"ref_model.0.weight": torch.zeros(4, 4, dtype=torch.bfloat16), "ref_model.0.bias": torch.zeros(4)}
    assert "holds 1 weights in torch.bfloat16" in rounded_reference_note(half, ref, fit)
    assert rounded_reference_note({k: v.float() for k, v in half.items()}, ref, fit) is None
    assert rounded_reference_note(half, ref, SimpleNamespace(state=SimpleNamespace(fn="validate"))) is None
    ref.to(torch.bfloat16)  # a bf16-mixed fit stores it so itself: nothing rounded that it would not round
    assert rounded_reference_note(half, ref, fit) is None

"""--model.freeze_vision / freeze_merger: no gradient reaches the frozen part, its weights
stay identical through GRPO steps, and the optimiser does not hold it."""

import pytest
import torch
from helpers import LengthReward, fit
from lightning.pytorch import seed_everything

from lit_vr1.config import GRPOConfig
from lit_vr1.grpo import GRPOModule
from lit_vr1.models.freeze import freeze_vision, vision_parts
from lit_vr1.sft import SFTModule


def grpo_step(samples, **freeze):
    seed_everything(0)
    cfg = GRPOConfig(num_generations=4, max_completion_length=12, beta=0.04, gradient_clip_val=None)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], grpo=cfg, seed=0,
                        optimizer=lambda p: torch.optim.SGD(p, lr=0.5), **freeze)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    fit(module, samples[:2], max_steps=1)
    opt = module.trainer.optimizers[0]
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    changed = {n for n, p in module.policy.named_parameters() if not torch.equal(p, before[n])}
    return module, held, changed


def names(module, params):
    ids = {id(p) for p in params}
    return {n for n, p in module.policy.named_parameters() if id(p) in ids}


def test_no_gradient_reaches_a_frozen_tower(samples):
    module = SFTModule(model="tiny:qwen2_5_vl", freeze_vision=True)
    module.configure_model()
    loss, _ = module.sft_loss(samples[:2])
    loss.backward()
    tower, merger = vision_parts(module.policy)
    assert all(p.grad is None for p in tower)
    assert all(p.grad is not None for p in merger)  # the gradient flows through the image tokens up to the merger


def test_frozen_tower_keeps_its_weights_and_is_not_in_the_optimiser(samples):
    module, held, changed = grpo_step(samples, freeze_vision=True)
    tower, merger = vision_parts(module.policy)
    assert not any(p.requires_grad for p in tower)
    assert not held & {id(p) for p in tower}
    assert not changed & names(module, tower)  # every tower weight is bit-identical
    assert changed & names(module, merger)  # the merger still trains
    assert any(n.startswith("model.language_model") for n in changed)


def test_freeze_merger_freezes_the_projector_too(samples):
    module, held, changed = grpo_step(samples, freeze_vision=True, freeze_merger=True)
    tower, merger = vision_parts(module.policy)
    assert not held & {id(p) for p in tower + merger}
    assert not changed & names(module, tower + merger)
    assert changed  # the language model still trains


def test_unfrozen_tower_trains(samples):
    module, held, changed = grpo_step(samples)
    tower, _ = vision_parts(module.policy)
    assert {id(p) for p in tower} <= held and changed & names(module, tower)


def test_freeze_counts_and_refuses_a_model_without_a_vision_tower(tiny_qwen2):
    import copy

    model = copy.deepcopy(tiny_qwen2[0])
    tower, merger = vision_parts(model)
    assert freeze_vision(model) == sum(p.numel() for p in tower) > 0
    assert all(p.requires_grad for p in merger)
    with pytest.raises(ValueError, match="no model.visual"):
        freeze_vision(torch.nn.Linear(2, 2))

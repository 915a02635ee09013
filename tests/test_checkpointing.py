"""--model.gradient_checkpointing: the same loss and gradients, with the layers run again
in the backward pass."""

import pytest
import torch

from lit_vr1.sft import SFTModule


def loss_grads_and_layer_calls(samples, checkpointing: bool):
    module = SFTModule(model="tiny:qwen2_5_vl", gradient_checkpointing=checkpointing)
    module.configure_model()
    calls = []
    # a submodule's hook: transformers checkpoints the layer's forward, inside the layer's own hooks
    attn = module.policy.model.language_model.layers[0].self_attn
    attn.register_forward_hook(lambda *_: calls.append(1))
    loss, _ = module.sft_loss(samples[:2])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.policy.named_parameters() if p.grad is not None}
    return loss.detach(), grads, len(calls)


def test_checkpointing_recomputes_and_changes_nothing_else(samples):
    loss, grads, calls = loss_grads_and_layer_calls(samples, False)
    loss_ckpt, grads_ckpt, calls_ckpt = loss_grads_and_layer_calls(samples, True)
    assert calls == 1 and calls_ckpt == 2  # the layer's attention ran again during the backward pass
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-6, rtol=1e-5)


# Shared prompts under checkpointing (lit_vr1/replay_cache.py): the prompt pass's key/value cache, with its graph,
# reaches the completion pass, and a checkpointed layer replayed in the backward pass rewrites nothing.

def _batch(model_and_processor, samples):
    from test_shared_prompt import make_batch

    model, rollout = make_batch(model_and_processor, samples)
    return model.train(), rollout


def _logits_and_grads(model, rollout, weights):
    from lit_vr1 import shared_prompt

    model.zero_grad(set_to_none=True)
    calls = []
    hook = model.model.language_model.layers[0].self_attn.register_forward_hook(lambda *_: calls.append(1))
    logits = shared_prompt.completion_logits(model, rollout, torch.arange(len(rollout)))
    ids = rollout.completion_ids
    (logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0] * weights).sum().backward()
    hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads, len(calls)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_shared_prompts_under_checkpointing_give_the_same_logits_and_gradients(samples, family):
    from lit_vr1 import replay_cache, shared_prompt
    from lit_vr1.models.tiny import build_tiny

    model, rollout = _batch(build_tiny(family, seed=0), samples)
    weights = torch.randn(rollout.completion_ids.shape, generator=torch.Generator().manual_seed(1))
    weights = weights * rollout.completion_mask
    logits, grads, calls = _logits_and_grads(model, rollout, weights)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert shared_prompt.checkpointing_drops_cache(model)  # transformers drops the cache of checkpointed layers
    assert replay_cache.keep_cache_under_checkpointing(model)
    assert not shared_prompt.checkpointing_drops_cache(model) and shared_prompt.unsupported_reason(model) is None
    logits_ckpt, grads_ckpt, calls_ckpt = _logits_and_grads(model, rollout, weights)
    assert calls == 2 and calls_ckpt == 4  # the prompt pass and the completion pass, each replayed in backward
    torch.testing.assert_close(logits_ckpt, logits, atol=0, rtol=0)
    assert grads.keys() == grads_ckpt.keys() and any("visual" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-7, rtol=1e-6)


def test_a_cache_that_appends_again_on_the_replay_breaks_the_backward(samples, monkeypatch):
    """Why the replay cache exists: a plain cache's second write of a layer doubles its keys."""
    from transformers import DynamicCache

    from lit_vr1 import replay_cache
    from lit_vr1.models.tiny import build_tiny

    model, rollout = _batch(build_tiny("qwen2_5_vl", seed=0), samples)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    replay_cache.keep_cache_under_checkpointing(model)
    monkeypatch.setattr(replay_cache.ReplayCache, "update", DynamicCache.update)
    with pytest.raises(RuntimeError):
        _logits_and_grads(model, rollout, rollout.completion_mask.float())


def test_without_transformers_switch_only_the_update_repeats_prompts(samples, monkeypatch):
    """A transformers whose checkpointed layers drop the cache: the forward with gradients repeats
    the prompts (the same logits); the rollout and the passes without gradients share them still."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    from lit_vr1 import replay_cache, scoring, shared_prompt
    from lit_vr1.models.tiny import build_tiny

    model, rollout = _batch(build_tiny("qwen2_5_vl", seed=0), samples)
    with torch.no_grad():
        want = scoring.distribution_logits(model, rollout, torch.arange(len(rollout)))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # an older transformers: its layers have no such switch (and drop the cache, as these do with it off)
    assert not hasattr(GradientCheckpointingLayer, "_no_such_switch")
    monkeypatch.setattr(replay_cache, "SWITCH", "_no_such_switch")
    assert not replay_cache.keep_cache_under_checkpointing(model)
    assert shared_prompt.unsupported_reason(model) is None and shared_prompt.checkpointing_drops_cache(model)
    passes = []
    real = shared_prompt.completion_logits
    monkeypatch.setattr(shared_prompt, "completion_logits", lambda *a, **k: passes.append(1) or real(*a, **k))
    with torch.no_grad():
        assert not shared_prompt.update_repeats_prompts(model)
        scoring.distribution_logits(model, rollout, torch.arange(len(rollout)))
    assert passes == [1]  # without gradients: shared
    got = scoring.distribution_logits(model, rollout, torch.arange(len(rollout)))
    assert passes == [1]  # with gradients: repeated, and the same logits
    valid = rollout.completion_mask.bool()
    assert (got.detach() - want)[valid].abs().max() < 2e-5


def test_a_grpo_module_with_checkpointing_keeps_shared_prompts_and_trains_the_same(samples):
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.rewards.base import Reward

    class Length(Reward):
        default_name = "length"

        def score(self, completions, contexts):
            return [len(c) / 10.0 for c in completions]

    def trained(checkpointing: bool):
        from helpers import fit
        from lightning.pytorch import seed_everything

        seed_everything(0)  # the same rollouts in both fits
        cfg = GRPOConfig(num_generations=2, max_completion_length=8, beta=0.04, micro_batch_size=2)
        module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[Length()], grpo=cfg, seed=0,
                            gradient_checkpointing=checkpointing)
        fit(module, samples[:4], max_steps=2)
        assert module.loop.use_shared_prompt()
        return {n: p.detach().clone() for n, p in module.policy.named_parameters()}

    plain, ckpt = trained(False), trained(True)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-7, rtol=1e-6)  # bit-identical here

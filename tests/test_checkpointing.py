"""--model.gradient_checkpointing: the same loss and gradients, with the layers run again
in the backward pass."""

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

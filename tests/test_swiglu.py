"""SwiGLU MLPs that recompute their SiLU in the backward pass (lit_vr1.models.swiglu): the same
bits forward and backward, one MLP-width activation less saved per layer."""

import copy
import functools
import pickle

import pytest
import torch
from torch import nn

from lit_vr1.generation import encode_prompts
from lit_vr1.models import swiglu


@pytest.fixture(scope="module")
def tiny_qwen3():
    from lit_vr1.models.tiny import build_tiny

    return build_tiny("qwen3_vl", seed=0)


def _pair(tiny):
    model, processor = tiny
    plain = copy.deepcopy(model).train()
    patched = copy.deepcopy(model).train()
    return plain, patched, processor


def _loss(model, inputs, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(**inputs).logits
    logits.float().square().mean().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["tiny_qwen25", "tiny_qwen2", "tiny_qwen3"])
@pytest.mark.parametrize("autocast", [False, True])
def test_same_logits_and_gradients_to_the_last_bit(family, autocast, samples, request):
    plain, patched, processor = _pair(request.getfixturevalue(family))
    assert swiglu.recompute_silu(patched) > 0
    inputs, _ = encode_prompts(processor, samples[:2])  # images too: the vision tower's MLPs run
    a, grads_a = _loss(plain, inputs, autocast)
    b, grads_b = _loss(patched, inputs, autocast)
    assert torch.equal(a, b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    assert all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


def _saved_bytes(model, inputs) -> int:
    total = {"bytes": 0}

    def pack(t):
        total["bytes"] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs).logits.sum()
    return total["bytes"]


def test_each_mlp_saves_one_activation_less(tiny_qwen25, samples):
    plain, patched, processor = _pair(tiny_qwen25)
    n = swiglu.recompute_silu(patched)
    layers = len(plain.model.language_model.layers) + len(plain.model.visual.blocks)
    assert n == layers  # every decoder layer's MLP and every vision block's
    inputs, _ = encode_prompts(processor, samples[:2])
    silu_out = {"bytes": 0}
    hooks = [m.act_fn.register_forward_hook(lambda mod, i, out: silu_out.update(
        bytes=silu_out["bytes"] + out.numel() * out.element_size())) for m in plain.modules() if swiglu._is_swiglu(m)]
    before = _saved_bytes(plain, inputs)
    for h in hooks:
        h.remove()
    after = _saved_bytes(patched, inputs)
    assert silu_out["bytes"] > 0 and before - after == silu_out["bytes"]


def test_other_mlps_keep_their_forward():
    class Qwen2MLP(nn.Module):  # a listed class, but with GELU
        def __init__(self, act):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)
            self.act_fn = act

    class ScaledMLP(Qwen2MLP):  # SiLU and the same parts, but a class not known to be plain SwiGLU
        pass

    others = [Qwen2MLP(nn.GELU()), ScaledMLP(nn.SiLU())]
    assert swiglu.recompute_silu(nn.Sequential(*others)) == 0 and all("forward" not in vars(m) for m in others)
    assert swiglu.recompute_silu(nn.Sequential(Qwen2MLP(nn.SiLU()))) == 1


def test_training_modules_patch_their_policy():
    from helpers import LengthReward

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2), seed=0)
    module.configure_model()
    mlps = [m for m in module.policy.modules() if swiglu._is_swiglu(m)]
    assert mlps and all(isinstance(m.forward, functools.partial) and m.forward.func is swiglu._forward
                        for m in mlps)
    restored = pickle.loads(pickle.dumps(module.policy))  # torch.save of the whole model works
    assert all(m.forward.args[0] is m for m in restored.modules() if swiglu._is_swiglu(m))

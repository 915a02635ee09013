"""Vision-tower attention batched per chunk length (lit_vr1.models.vision_attention): the same
bits forward and backward as transformers' one call per chunk, fewer calls."""

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lit_vr1.data.jsonl import JsonlDataset
from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic
from lit_vr1.generation import encode_prompts
from lit_vr1.models import vision_attention


@pytest.fixture(scope="module")
def tiny_qwen3():
    from lit_vr1.models.tiny import build_tiny

    return build_tiny("qwen3_vl", seed=0)


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory):
    """Images of 112 and 140 px in one batch: chunks of several lengths (per image, and under
    Qwen2.5-VL's 112 px windows, full and partial windows)."""
    out = []
    for canvas in (112, 140):
        root = tmp_path_factory.mktemp(f"canvas{canvas}")
        write_synthetic(root, SyntheticSpec(num_samples=2, canvas=canvas), "train")
        ds = JsonlDataset(str(root / "train.jsonl"), str(root / "images"), "qwen_rec")
        out += [ds[0], ds[1]]
    return out


def _loss(model, inputs):
    model.zero_grad(set_to_none=True)
    logits = model(**inputs).logits
    logits.float().square().mean().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _count_sdpa(model, inputs, monkeypatch) -> int:
    calls = {"n": 0}
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        model(**inputs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", real)
    return calls["n"]


@pytest.mark.parametrize("family", ["tiny_qwen25", "tiny_qwen2", "tiny_qwen3"])
@pytest.mark.parametrize("images", ["same_size", "mixed_sizes"])
def test_same_logits_and_gradients_to_the_last_bit(family, images, samples, mixed_sizes, request, monkeypatch):
    model, processor = request.getfixturevalue(family)
    plain, patched = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    assert vision_attention.batch_chunks(patched) == len(plain.model.visual.blocks)
    batch = samples[:4] if images == "same_size" else mixed_sizes
    inputs, _ = encode_prompts(processor, batch)
    a, grads_a = _loss(plain, inputs)
    b, grads_b = _loss(patched, inputs)
    assert torch.equal(a, b)
    assert grads_a.keys() == grads_b.keys() and any("visual" in k for k in grads_a)
    assert all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)
    # fewer attention calls: one per chunk length and block, not one per chunk
    assert _count_sdpa(patched, inputs, monkeypatch) < _count_sdpa(plain, inputs, monkeypatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunks_of_several_lengths_match_one_call_each(dtype):
    # the towers' chunks are whole 2 x 2 merge units: multiples of 4 patches
    torch.manual_seed(0)
    lengths = [4, 16, 4, 12, 16, 64, 4]
    q, k, v = (torch.randn(sum(lengths), 3, 16, dtype=dtype) for _ in range(3))
    got = vision_attention.attend_chunks(q, k, v, lengths, scale=0.3, dropout=0.0)
    want, start = [], 0
    for n in lengths:
        one = [x[start: start + n].transpose(0, 1)[None] for x in (q, k, v)]
        want.append(F.scaled_dot_product_attention(*one, scale=0.3)[0].transpose(0, 1))
        start += n
    assert torch.equal(got, torch.cat(want))


def test_other_attention_implementations_keep_transformers_forward(tiny_qwen25, samples):
    model, processor = tiny_qwen25
    eager = copy.deepcopy(model)
    eager.model.visual.config._attn_implementation = "eager"
    vision_attention.batch_chunks(eager)
    inputs, _ = encode_prompts(processor, samples[:2])
    reference = copy.deepcopy(model)
    reference.model.visual.config._attn_implementation = "eager"
    with torch.no_grad():
        assert torch.equal(eager(**inputs).logits, reference(**inputs).logits)


def test_patched_model_pickles_and_copies(tiny_qwen25):
    model, _ = tiny_qwen25
    patched = copy.deepcopy(model)
    vision_attention.batch_chunks(patched)
    for clone in (copy.deepcopy(patched), pickle.loads(pickle.dumps(patched))):
        block = clone.model.visual.blocks[0].attn
        assert block.forward.args[0] is block


def test_training_modules_patch_their_policy():
    from helpers import LengthReward

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2), seed=0)
    module.configure_model()
    blocks = module.policy.model.visual.blocks
    assert all(b.attn.forward.func is vision_attention._forward for b in blocks)


def test_runs_of_equal_chunks():
    assert vision_attention.runs([64, 64, 32, 64, 64, 32, 16]) == [(0, 2, 64), (128, 1, 32), (160, 2, 64),
                                                                    (288, 1, 32), (320, 1, 16)]


def test_a_class_of_another_shape_keeps_its_forward():
    class Qwen2_5_VLVisionAttention(nn.Module):  # the name, but not transformers' class
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(4, 12), nn.Linear(4, 4)

        def forward(self, hidden_states, cu_seqlens, position_embeddings=None):
            return hidden_states

    module = Qwen2_5_VLVisionAttention()
    assert vision_attention.batch_chunks(nn.Sequential(module)) == 0 and "forward" not in vars(module)

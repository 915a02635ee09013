"""SFT: the loss covers the assistant's tokens only, images included, and it learns."""

import copy

import torch
from helpers import fit
from lightning.pytorch import seed_everything
from PIL import Image

from lit_vr1.generation import encode_prompts
from lit_vr1.sft import SFTModule


def reference_loss(model, processor, sample):
    """transformers' own LM loss on prompt + answer, with the prompt's labels set to -100."""
    inputs, _ = encode_prompts(processor, [sample])
    tok = processor.tokenizer
    answer = tok(sample.solution, add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = torch.cat([inputs["input_ids"], torch.tensor([answer])], dim=1)
    labels = torch.cat([torch.full_like(inputs["input_ids"], -100), torch.tensor([answer])], dim=1)
    inputs["input_ids"] = ids
    inputs["attention_mask"] = torch.ones_like(ids)
    inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(answer), dtype=torch.long)], 1)
    return model(**inputs, labels=labels).loss, len(answer)


def test_loss_is_assistant_tokens_only_and_matches_transformers(samples):
    module = SFTModule(model="tiny:qwen2_5_vl")
    module.configure_model()
    with torch.no_grad():
        ours, n = module.sft_loss(samples[:1])
        ref, n_ref = reference_loss(module.policy, module.processor, samples[0])
        assert n == n_ref
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        # a batch of two (padding on both sides) is the token-weighted mean of the two
        pair, n_pair = module.sft_loss(samples[:2])
        second, n2 = reference_loss(module.policy, module.processor, samples[1])
        torch.testing.assert_close(pair, (ref * n_ref + second * n2) / (n_ref + n2), atol=1e-5, rtol=1e-5)


def test_multi_image_sample(samples):
    module = SFTModule(model="tiny:qwen2_5_vl")
    module.configure_model()
    two = copy.copy(samples[0])
    two.images = [samples[0].images[0], Image.new("RGB", (56, 84), (10, 200, 10))]
    two.messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                                 {"type": "text", "text": "Find the red circle in the first image."}]}]
    with torch.no_grad():
        loss, n = module.sft_loss([two, samples[1]])
    assert torch.isfinite(loss) and n > 0


def test_sft_fits_a_small_batch_and_exports(samples, tmp_path):
    seed_everything(0)
    module = SFTModule(model="tiny:qwen2_5_vl", optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3),
                       export_dir=str(tmp_path / "export"))
    module.configure_model()
    batch = samples[:4]
    with torch.no_grad():
        before = module.sft_loss(batch)[0].item()
    fit(module, batch * 10, max_steps=25, batch_size=4)
    with torch.no_grad():
        after = module.sft_loss(batch)[0].item()
    assert after < 0.5 * before
    assert (tmp_path / "export" / "config.json").exists() and (tmp_path / "export" / "tokenizer_config.json").exists()



def test_no_model_summary_notice_under_bf16_mixed(tmp_path):
    """Lightning's summary says bf16-mixed is unsupported and counts 32 bits a weight: exactly
    right for lit-vr1's float32 weights, so the notice is silenced (lit_vr1/quiet.py). In a
    process of its own: pytest resets warning filters around each test."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """
from lightning.pytorch import Trainer
from lit_vr1.data.datamodule import GroundingDataModule
from lit_vr1.data.synthetic import SyntheticSpec
from lit_vr1.sft import SFTModule
module = SFTModule(model="tiny:qwen2_5_vl")
data = GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56, max_shapes=1), synthetic_dir="data",
                           batch_size=2, num_val_samples=0)
trainer = Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, max_steps=1, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=True)
trainer.fit(module, data)  # the summary is printed at fit start, while lit-vr1's filters are on
print(trainer.global_step == 1)
"""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(root)))
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "True", proc.stderr[-2000:]
    assert "not supported by the model summary" not in proc.stderr


def test_rows_without_an_answer_are_refused_with_their_file_and_line(samples):
    """Label-free rows (solution "") would train the end-of-turn token alone, silently."""
    import dataclasses

    import pytest

    from lit_vr1.data.jsonl import DataError

    module = SFTModule(model="tiny:qwen2_5_vl")
    module.configure_model()
    unlabelled = dataclasses.replace(samples[1], solution="")
    with pytest.raises(DataError) as info:
        module.sft_loss([samples[0], unlabelled])
    assert str(info.value).startswith(f"{unlabelled.source}: sample '{unlabelled.id}' has no answer")
    assert ":" in unlabelled.source  # file:line

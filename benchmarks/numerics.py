"""What bf16 does to GRPO's numbers, and what lit-vr1 keeps in float32 (CPU, a few seconds).

    python benchmarks/numerics.py [--json out.json]

1. Master weights: 10 AdamW steps at lr 1e-6 on a 2048 x 2048 weight (std 0.02) stored in
   bf16 vs float32: the fraction of entries that changed.
2. Log-probs of a tiny Qwen2.5-VL under bf16 autocast (what ``trainer.precision=bf16-mixed``
   runs) against the same model in float64: the largest error of a sampled token's log-prob,
   with transformers' own head (bf16 logits) and bf16 log-probs, as before, and with
   lit-vr1's float32 head and float32 log-probs.
3. KL at small drift: the policy's weights moved by a relative 1e-3 from the reference's;
   the fraction of completion tokens whose k3 KL is exactly 0, both ways.
4. top_k=50: the mean k3 KL of a policy equal to its reference when the policy is scored
   under the top-k cut and the reference without it (as before), and under one distribution.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def adamw_retention(dtype: torch.dtype, steps: int = 10, lr: float = 1e-6) -> float:
    torch.manual_seed(0)
    w = torch.nn.Parameter((torch.randn(2048, 2048) * 0.02).to(dtype))
    start = w.detach().clone()
    opt = torch.optim.AdamW([w], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        w.grad = torch.randn_like(w)
        opt.step()
    return float((w.detach() != start).float().mean())


def logprob_figures() -> dict:
    import tempfile

    from lit_vr1.config import SamplingConfig
    from lit_vr1.data.jsonl import JsonlDataset
    from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic
    from lit_vr1.generation import generate
    from lit_vr1.loss import k3_kl, sampling_logits, token_logprobs
    from lit_vr1.models.families import vision_token_ids
    from lit_vr1.models.precision import float32_head
    from lit_vr1.models.tiny import build_tiny

    def completion_logits(m, inputs, width):  # the plain (prompt + completion) forward's completion logits
        return m(**inputs, use_cache=False, logits_to_keep=width + 1).logits[:, :-1]

    def policy_logprobs(logits, tokens, c):
        return token_logprobs(sampling_logits(logits, c.temperature, c.top_k, c.top_p, c.suppress_ids), tokens)

    root = tempfile.mkdtemp()
    write_synthetic(root, SyntheticSpec(num_samples=4, canvas=112), "train")
    ds = JsonlDataset(os.path.join(root, "train.jsonl"), os.path.join(root, "images"), "qwen_rec")
    samples = [ds[i] for i in range(4)]
    model, processor = build_tiny("qwen2_5_vl", seed=0)
    model.eval()
    torch.manual_seed(0)
    cfg = SamplingConfig(max_completion_length=24, suppress_ids=vision_token_ids(processor))
    r = generate(model, processor, samples, 4, cfg, shared=False)
    mask = r.completion_mask.bool()
    inputs, width = r.model_inputs(), r.completion_ids.shape[1]

    def logp(m, head32: bool, out_dtype=None):
        m = copy.deepcopy(m)
        if head32:
            float32_head(m)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            lp = token_logprobs(completion_logits(m, inputs, width), r.completion_ids)
        return lp.to(out_dtype) if out_dtype is not None else lp

    with torch.no_grad():
        exact = token_logprobs(completion_logits(copy.deepcopy(model).double(), {k: v.double() if v.is_floating_point()
                                                                                  else v for k, v in inputs.items()},
                                                 width), r.completion_ids).double()
    before = logp(model, head32=False, out_dtype=torch.bfloat16)  # bf16 logits, bf16 log-probs
    after = logp(model, head32=True)
    drifted = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in drifted.parameters():
            p.mul_(1 + 1e-3 * torch.randn_like(p))
    kl_after = k3_kl(logp(drifted, True), after)
    # before: bf16 log-probs, and k3 as exp(r) - r - 1 in their dtype
    r_before = before - logp(drifted, False, torch.bfloat16)
    old_formula = torch.exp(r_before) - r_before - 1
    cut = SamplingConfig(top_k=50, max_completion_length=24, suppress_ids=cfg.suppress_ids)
    torch.manual_seed(0)
    rk = generate(model, processor, samples, 4, cut, shared=False)
    with torch.no_grad():
        logits_k = completion_logits(model, rk.model_inputs(), rk.completion_ids.shape[1])
    mk = rk.completion_mask.bool()
    pol_cut = policy_logprobs(logits_k, rk.completion_ids, cut)
    ref_full = policy_logprobs(logits_k, rk.completion_ids, cut.scoring())
    return {
        "topk50_kl_policy_equals_reference_before": float(k3_kl(pol_cut, ref_full)[mk].mean()),
        "topk50_kl_policy_equals_reference_after": float(k3_kl(ref_full, ref_full)[mk].mean()),
        "tokens": int(mask.sum()),
        "logprob_max_abs_error_before": float((before.double() - exact)[mask].abs().max()),
        "logprob_max_abs_error_after": float((after.double() - exact)[mask].abs().max()),
        "kl_exactly_zero_frac_before": float((old_formula[mask] == 0).float().mean()),
        "kl_exactly_zero_frac_after": float((kl_after[mask] == 0).float().mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = {
        "adamw_changed_frac_bf16": adamw_retention(torch.bfloat16),
        "adamw_changed_frac_float32": adamw_retention(torch.float32),
        **logprob_figures(),
        "torch": torch.__version__,
    }
    for k, v in out.items():
        print(f"{k:40} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()

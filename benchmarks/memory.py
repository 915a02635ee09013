"""Peak memory of GRPO steps: full fine-tuning vs a frozen vision tower vs LoRA.

    python benchmarks/memory.py [--steps 3] [--prompts 4] [--generations 4] [--completion 32]
                                [--hidden 512] [--layers 4] [--vision-hidden 256] [--vision-depth 2] [--canvas 112]
                                [--precision 32-true] [--variants NAME,NAME | checkpointing]

Each variant runs in its own Python process (so one variant's allocations cannot hide
another's peak): it builds a tiny random Qwen2.5-VL of the given sizes, runs ``--steps``
GRPO steps on CPU with the same settings (prompts x G completions of exactly
``--completion`` tokens, beta 0.04 so the reference model is scored, AdamW), and reports

- peak RSS: ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the process's high-water mark;
- peak - loaded: that peak minus the RSS right after the model (and, with beta > 0, its
  reference) was built, i.e. what the steps themselves added: gradients, optimiser state,
  activations, the rollout;
- trainable parameters, and parameters held in memory (policy + reference, each tensor
  counted once: with LoRA the reference is the same model with the adapters disabled),
  and what they cost, computed: the weights' bytes as held (under ``--precision bf16-mixed``
  the reference's linear weights in bf16; the "float32 reference" row keeps them float32)
  + a float32 gradient and AdamW's two moments per trainable one.

At these tiny sizes the activations of 16 sequences are as large as the weights, so LoRA's
saving (no reference copy, no gradient or optimiser state for the base) is partly eaten by
LoRA dropout, which keeps a dropped copy of every adapted layer's input for the backward
pass: hence the two LoRA rows. At real sizes (billions of parameters) the weights dominate.

``--variants checkpointing`` runs the activation-checkpointing rows instead (full fine-tuning
without checkpointing first, then each of them), whose cost grows with the prompt's length: use large images
(``--canvas 448``: 256 image tokens a prompt).

Prints one markdown table. Memory figures are CPU RSS in MiB; on GPU the same differences
show up in ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

VARIANTS = {
    "full fine-tuning": {},
    # under --precision bf16-mixed the reference stores its linear weights in bf16; this row keeps them float32
    "full fine-tuning with a float32 reference": {"float32_reference": True},
    "freeze_vision=true": {"freeze_vision": True},
    "LoRA r=16, dropout 0.05": {"lora": 0.05},
    "LoRA r=16, dropout 0": {"lora": 0.0},
    # activation checkpointing: shared prompts kept under it (lit_vr1/replay_cache.py), and the repeated prompts
    # it fell back to until 2026-12-06 (grpo.shared_prompt=false gives that path)
    "gradient_checkpointing=true": {"gradient_checkpointing": True},
    "gradient_checkpointing=true, prompts repeated": {"gradient_checkpointing": True, "shared_prompt": False},
    "shared_prompt=false": {"shared_prompt": False},
}
CHECKPOINTING = [n for n in VARIANTS if "gradient_checkpointing" in n or "shared_prompt" in n]


def rss_mib() -> float:
    """Current resident set size (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(name: str, args) -> dict:
    import gc

    import torch
    from lightning.pytorch import Trainer, seed_everything
    from torch.utils.data import DataLoader

    from lit_vr1.config import GRPOConfig
    from lit_vr1.data.datamodule import collate
    from lit_vr1.data.jsonl import JsonlDataset
    from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.models.lora import LoraSpec
    from lit_vr1.models.tiny import TinySpec
    from lit_vr1.rewards.base import Reward

    class CompletionLength(Reward):
        """Differs between completions, so advantages (and gradients) are not zero."""

        default_name = "length"

        def score(self, completions, contexts):
            return [len(c) / 100.0 for c in completions]

    torch.set_num_threads(args.threads)
    seed_everything(0)
    root = tempfile.mkdtemp(prefix="lit_vr1_memory_")
    write_synthetic(root, SyntheticSpec(num_samples=args.prompts * args.steps, canvas=args.canvas), "train")
    ds = JsonlDataset(os.path.join(root, "train.jsonl"), os.path.join(root, "images"), "qwen_rec")
    samples = [ds[i] for i in range(len(ds))]

    options = dict(VARIANTS[name])
    if options.pop("float32_reference", False):
        from lit_vr1.models import precision

        precision.store_cast_weights = lambda model, dtype: 0
    if "lora" in options:
        options["lora"] = LoraSpec(r=16, alpha=32, dropout=options["lora"])
    spec = TinySpec(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 64, num_kv_heads=2,
                    intermediate_size=3 * args.hidden, vision_hidden=args.vision_hidden, vision_depth=args.vision_depth,
                    vision_heads=max(1, args.vision_hidden // 64))
    # eos suppressed so that every completion has exactly --completion tokens: the same work in every variant
    cfg = GRPOConfig(num_generations=args.generations, max_completion_length=args.completion, beta=0.04,
                     gradient_clip_val=1.0, shared_prompt=options.pop("shared_prompt", True))
    module = GRPOModule(model="tiny:qwen2_5_vl", tiny_spec=spec, rewards=[CompletionLength()], grpo=cfg, seed=0,
                        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4), **options)
    module.loop.suppress_ids = tuple(module.loop.suppress_ids) + (
        module.processor.tokenizer.convert_tokens_to_ids("<|im_end|>"),)
    loader = DataLoader(samples, batch_size=args.prompts, shuffle=False, collate_fn=collate)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=args.steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      precision=args.precision)
    module.trainer = trainer  # the reference built now is stored as the fit's precision runs it
    module.configure_model()
    gc.collect()
    loaded = rss_mib()
    start = time.perf_counter()
    trainer.fit(module, loader)
    seconds = time.perf_counter() - start
    params = {p.data_ptr(): p for p in module.parameters()}  # as the fit held them (a bf16 reference's included)
    held = sum(p.numel() for p in params.values())
    held_mib = sum(p.numel() * p.element_size() for p in params.values()) / 2**20
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    lengths = module.loop.last_rollout.completion_mask.sum(dim=1)
    # what the parameters cost, computed: weights held + a float32 gradient and AdamW's two moments per trainable one
    state = held_mib + 3 * trainable * 4 / 2**20
    return {"variant": name, "peak_mib": peak_mib(), "loaded_mib": loaded, "trainable": trainable, "held": held,
            "state_mib": state,
            "seconds": seconds, "steps": trainer.global_step, "completion_tokens": lengths.float().mean().item()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--completion", type=int, default=32)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vision-hidden", type=int, default=256)
    p.add_argument("--vision-depth", type=int, default=2)
    p.add_argument("--canvas", type=int, default=112)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="32-true", help="trainer.precision (bf16-mixed: bf16 autocast, float32 weights)")
    p.add_argument("--variants", help="comma-separated variant names to run (default: all)")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant and print JSON
    args = p.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(child(args.variant, args)), flush=True)
        return
    rows = []
    from lit_vr1.models.precision import MIXED_PRECISION_DTYPES

    mixed = args.precision in MIXED_PRECISION_DTYPES  # the float32-reference row differs from the first only then
    default = [n for n in VARIANTS if (mixed or "float32 reference" not in n) and n not in CHECKPOINTING]
    names = ["full fine-tuning", *CHECKPOINTING] if args.variants == "checkpointing" else (
        args.variants.split(",") if args.variants else default)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"--variants: {', '.join(unknown)} not among {', '.join(VARIANTS)}")
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), "--variant", name, *sys.argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(line[len("RESULT "):]))
    print(f"\nGRPO on CPU, tiny Qwen2.5-VL (LM hidden {args.hidden} x {args.layers} layers, vision hidden "
          f"{args.vision_hidden} x {args.vision_depth} blocks, {args.canvas}px images), {args.steps} steps of "
          f"{args.prompts} prompts x G={args.generations}, {args.completion} completion tokens, beta 0.04, AdamW, "
          f"{args.precision}\n")
    print("| variant | peak RSS (MiB) | peak - loaded (MiB) | trainable params | params in memory (policy + ref) "
          "| weights + grads + AdamW (MiB, computed) | s/step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['peak_mib']:.0f} | {r['peak_mib'] - r['loaded_mib']:.0f} | {r['trainable']:,} "
              f"| {r['held']:,} | {r['state_mib']:.0f} | {r['seconds'] / max(r['steps'], 1):.1f} |")


if __name__ == "__main__":
    main()

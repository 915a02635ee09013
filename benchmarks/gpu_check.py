"""The real regime on a GPU, in one prepared command (``bash benchmarks/gpu_check.sh``).

    python benchmarks/gpu_check.py [--size 3b|tiny] [--device cuda|cpu] [--parts twins,grpo,trl,profile]
                                   [--steps 2] [--warmup 1] [--json gpu_check.json] [--budget-s 420]

Parts, each a section of the JSON (written again after every part, so a run cut short
still returns what it measured):

- ``twins``: each seed recipe's tiny twin (``configs/tiny/<recipe>.yaml`` laid over
  ``configs/<recipe>.yaml``) fits 2 steps on ``--device`` in the recipe's own precision
  (``bf16-mixed``, float32 weights); wall time, loss finite, the weights moved.
- ``grpo``: a Qwen2.5-VL-3B-shaped model with random weights, built from the sizes of its
  published ``config.json`` (nothing is downloaded; lit-vr1's tiny tokenizer and Qwen's
  image processor), then GRPO at the 3B recipe's settings: ``bf16-mixed`` over float32
  weights, G=8, 2 prompts per device, 256 completion tokens (end-of-turn suppressed, so
  every completion has all of them), micro-batches of 4, beta 0.04, AdamW 1e-6; full
  fine-tuning (decoding steps replayed from a CUDA graph, the default, and without it:
  ``full_no_graph``), frozen vision tower, and LoRA (r 16). Seconds per step, completion
  tokens/s, peak GPU memory, host memory, and the step split into rollout / no-grad log-prob
  passes / update.
- ``profile``: one rollout of the 3B-shaped model with the captured decoding step and without,
  under ``torch.profiler``: the operators and kernels that take the most device time, with
  their calls per decoding step (where the rest of a decoding step goes).
- ``trl``: TRL's GRPOTrainer (its wheel carried) on the same model, prompts and work, in
  ``bf16`` over float32 weights, alternating with lit-vr1's full fine-tuning run, gradient
  checkpointing off on both sides (asserted inside TRL's run).

Each lit-vr1 and TRL run is its own process (``benchmarks/vs_trl.py --child``), so one's
memory does not count in the other's. ``--size tiny --device cpu`` runs the same code at
toy size on the CPU: ``tests/test_gpu_check.py`` does, so that this script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

RECIPES = ["grpo_rec_qwen25vl_3b", "grpo_ovd_qwen25vl_3b", "grpo_vision_r1_loc_qwen25vl_3b",
           "grpo_r1v_free_qwen25vl_3b", "grpo_vision_r1_reason_qwen25vl_3b"]

# Qwen2.5-VL-3B-Instruct's config.json (the sizes; the weights are random here)
QWEN25_VL_3B = {
    "text": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                 num_key_value_heads=2, vocab_size=151936, rope_theta=1_000_000.0, mrope_section=[16, 24, 24],
                 max_position_embeddings=128000),
    "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                   window_size=112, fullatt_block_indexes=[7, 15, 23, 31], patch_size=14, spatial_merge_size=2,
                   temporal_patch_size=2),
    "tie_word_embeddings": True,
}
TINY = {
    "text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, rope_theta=10.0, mrope_section=[2, 3, 3],
                 max_position_embeddings=4096),
    "vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, window_size=112,
                   fullatt_block_indexes=[1], patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    "tie_word_embeddings": True,
}
# the work of one step at each size: prompts per device, G, completion tokens, image side, micro-batch
WORK = {"3b": dict(prompts=2, generations=8, completion=256, image=448, micro=4),
        "tiny": dict(prompts=2, generations=4, completion=8, image=56, micro=4)}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "lightning", "peft", "torchmetrics", "trl", "accelerate", "datasets",
                 "jsonargparse", "flash-attn", "deepspeed"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    import torch

    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


# -- twins ------------------------------------------------------------------------------------
def _length_reward_class():
    from lit_vr1.rewards.base import Reward

    class CompletionLength(Reward):
        """Varies between the completions of a random model (so that advantages are not all 0)."""

        default_name = "length"

        def score(self, completions, contexts):
            return [len(c) / 100.0 for c in completions]

    return CompletionLength


CompletionLength = _length_reward_class()
def rewards_overlay(recipe: str, url: str | None, path: Path, length_reward: str) -> str:
    """A config overlay that keeps the recipe's reward list, points its remote judge at ``url``
    and adds the reward ``length_reward`` (a class path) at weight 0.1: a random tiny model never
    writes the recipes' answers, so their rewards alone tie in every group (zero advantage,
    zero gradient), and a check that the weights moved would test nothing. The judge is asked
    about every completion (``answer_required: false``): the random model writes no ``<answer>``
    block, and the judge would otherwise never be reached."""
    import yaml

    rewards = yaml.safe_load(open(ROOT / "configs" / f"{recipe}.yaml"))["model"]["init_args"]["rewards"]
    for r in rewards:
        if r["class_path"].endswith("RemoteRewardModel"):
            r["init_args"]["url"] = url
            r["init_args"]["answer_required"] = False
    rewards.append({"class_path": length_reward, "init_args": {"weight": 0.1}})
    path.write_text(yaml.safe_dump({"model": {"init_args": {"rewards": rewards}}}))
    return str(path)


def run_twins(device: str, root: Path) -> list[dict]:
    """Each recipe's tiny twin for 2 steps on ``device`` in the recipe's own precision."""
    import torch

    from lit_vr1.cli import LitVR1CLI
    from lit_vr1.models.loading import load_model
    from lit_vr1.rewards.serve import launch

    out = []
    with launch("tiny:qwen2_5_vl") as judge:  # the R1V-Free twin's HTTP judge (LitServe)
        url = judge.url + "/score"
        for recipe in RECIPES:
            work = root / recipe
            work.mkdir(parents=True, exist_ok=True)
            overlay = rewards_overlay(recipe, url, work / "rewards.yaml", "gpu_check.CompletionLength")
            args = ["fit", "--config", str(ROOT / "configs" / f"{recipe}.yaml"),
                    "--config", str(ROOT / "configs" / "tiny" / f"{recipe}.yaml"), "--config", str(overlay),
                    f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
                    f"--trainer.default_root_dir={work}", f"--trainer.logger.init_args.save_dir={work}",
                    f"--data.init_args.synthetic_dir={work / 'data'}"]
            t0 = time.perf_counter()
            row = {"recipe": recipe}
            try:
                cli = LitVR1CLI(args=args)
                m = cli.model
                start = load_model(m.model_name, m.processor, m.dtype_name, seed=m.seed, tiny_spec=m.tiny_spec).state_dict()
                moved = any(not torch.equal(p.detach().cpu(), start[n]) for n, p in m.policy.named_parameters()
                            if p.requires_grad)
                row.update(ok=True, steps=cli.trainer.global_step, precision=str(cli.trainer.precision),
                           loss=float(m.last_metrics["loss"]), weights_moved=moved,
                           trained_dtype=str(next(p for p in m.policy.parameters() if p.requires_grad).dtype),
                           # where the rollout ran (Lightning moves the module back to the CPU after fit)
                           device=str(m.loop.last_rollout.completion_ids.device))
            except Exception as exc:  # noqa: BLE001 - recorded, the other recipes still run
                row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
            row["wall_s"] = time.perf_counter() - t0
            out.append(row)
            print(f"twin {recipe}: {row}", flush=True)
    return out


# -- the 3B-shaped model ----------------------------------------------------------------------------
def build_shaped_model(out_dir: Path, size: str, device: str) -> None:
    """A Qwen2.5-VL model with the sizes of ``size`` and random weights, saved (bf16 on disk)
    with lit-vr1's tiny tokenizer and Qwen's image processor; loads like a checkpoint."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from lit_vr1.models.tiny import SPECIAL_TOKENS, TinySpec, build_processor

    sizes = QWEN25_VL_3B if size == "3b" else TINY
    processor = build_processor("qwen2_5_vl", TinySpec(min_pixels=3136, max_pixels=12845056), seed=0)
    ids = {name: processor.tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text = dict(sizes["text"])
    rope = {"rope_type": "default", "rope_theta": text.pop("rope_theta"), "mrope_section": text.pop("mrope_section")}
    config = Qwen2_5_VLConfig(
        text_config=dict(text, rope_parameters=rope, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=sizes["vision"], image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=sizes["tie_word_embeddings"])
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.to(torch.bfloat16).save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def prepare_work(root: Path, size: str, device: str, steps: int, warmup: int) -> dict:
    """The model, the prompts (for both trainers) and the common run settings."""
    from vs_trl import write_trl_prompts

    from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic

    work = dict(WORK[size])
    model_dir, data_dir = root / "model", root / "data"
    t0 = time.perf_counter()
    build_shaped_model(model_dir, size, device)
    n = work["prompts"] * (warmup + steps)
    write_synthetic(data_dir, SyntheticSpec(num_samples=n, canvas=work["image"]), "train")
    write_trl_prompts(str(data_dir), str(model_dir), n)
    return dict(work, beta=0.04, steps=steps, warmup=warmup, model_dir=str(model_dir), data_dir=str(data_dir),
                tmp=str(root / "trl_out"), device=device, precision="bf16-mixed" if device == "cuda" else "32-true",
                gradient_checkpointing=False, lit_options={}, trl_freeze_vision=False, lora=False,
                build_s=time.perf_counter() - t0)


VARIANTS = {"full": {}, "full_no_graph": {"lit_options": {"cuda_graph": False}},
            "frozen_vision": {"lit_options": {"freeze_vision": True}, "trl_freeze_vision": True},
            "lora": {"lora": True}}


def summary(res: dict, cfg: dict) -> dict:
    """The figures of one trainer's runs: s/step, completion tokens/s, memory, the split."""
    p = res["profile"]
    tokens = cfg["prompts"] * cfg["generations"] * cfg["completion"]
    out = {"step_s": res["step_s"], "completion_tokens_per_s": tokens / res["step_s"],
           "peak_gpu_mib": res.get("peak_gpu_mib"), "peak_rss_mib": res["peak_mib"],
           "rollout_s": p["rollout"], "rollout_ms_per_decoding_step": 1000 * p["rollout"] / cfg["completion"],
           "nograd_logprobs_s": p["nograd_logprobs"],
           "update_s": res["step_s"] - p["rollout"] - p["nograd_logprobs"], "images_encoded": p["images_encoded"]}
    if "graph_refused" in res["runs"][0]:
        out["cuda_graph_refused"] = res["runs"][0]["graph_refused"]
    return {k: (round(v, 4) if isinstance(v, float) and math.isfinite(v) else v) for k, v in out.items()}


def run_grpo(cfg: dict, variants: list[str], with_trl: bool, deadline: float) -> dict:
    """lit-vr1 in each variant and, with ``with_trl``, TRL in full fine-tuning, alternating."""
    from vs_trl import measure

    out = {}
    for name in variants:
        if time.perf_counter() > deadline:
            out[name] = {"skipped": "out of time"}
            continue
        c = dict(cfg, **VARIANTS[name])
        trainers = ["lit", "trl"] if with_trl and name == "full" else ["lit"]
        res = measure(c, trainers, repeats=1)
        out[name] = {t: summary(r, c) for t, r in res.items()}
        if "trl" in res:
            lit, trl = out[name]["lit"], out[name]["trl"]
            out[name]["ratio_tokens_per_s"] = lit["completion_tokens_per_s"] / trl["completion_tokens_per_s"]
            if lit["peak_gpu_mib"] and trl["peak_gpu_mib"]:
                out[name]["ratio_peak_gpu_mib"] = lit["peak_gpu_mib"] / trl["peak_gpu_mib"]
        print(f"grpo {name}: {out[name]}", flush=True)
    return out


def profile_decode(cfg: dict, top: int = 15) -> dict:
    """One rollout of the work's prompts (the policy in float32 under bf16 autocast on CUDA, as
    in training), with the captured decoding step and without, each after a warm-up rollout,
    under ``torch.profiler``: wall seconds, and the operators and kernels that took the most
    device time (CPU time off CUDA), with their counts per decoding step. Where the decoding
    step's time goes, for the next change to aim at."""
    import dataclasses

    import torch
    from torch.profiler import ProfilerActivity, profile
    from vs_trl import load_samples

    from lit_vr1 import shared_prompt
    from lit_vr1.config import SamplingConfig
    from lit_vr1.generation import encode_prompts
    from lit_vr1.models.loading import load_model, load_processor
    from lit_vr1.models.precision import cached_autocast

    device = cfg["device"]
    processor = load_processor(cfg["model_dir"])
    model = load_model(cfg["model_dir"], processor).to(device).eval()
    samples = load_samples(cfg["data_dir"], cfg["prompts"])
    prompt = {k: v.to(device) for k, v in encode_prompts(processor, samples)[0].items()}
    eos, pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id
    steps = cfg["completion"]
    base = SamplingConfig(max_completion_length=steps, suppress_ids=(eos,))  # every completion full length
    on_cuda = device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    out = {}
    def rollout(sampling: SamplingConfig) -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=on_cuda), cached_autocast(device):
            shared_prompt.sample(model, prompt, cfg["generations"], sampling, [eos], pad)
        if on_cuda:
            torch.cuda.synchronize()

    for name, graph in (("graph", True), ("eager", False)):
        sampling = dataclasses.replace(base, cuda_graph=graph)
        rollout(sampling)  # warm-up
        t0 = time.perf_counter()
        with profile(activities=activities) as prof:
            rollout(sampling)
        wall = time.perf_counter() - t0
        key = "self_device_time_total" if on_cuda else "self_cpu_time_total"
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0) or 0, reverse=True)[:top]
        out[name] = {"rollout_s": round(wall, 4), "ms_per_decoding_step": round(1000 * wall / steps, 3),
                     "top": [{"name": e.key[:120], "ms": round((getattr(e, key, 0) or 0) / 1000, 3),
                              "calls_per_step": round(e.count / steps, 2)} for e in events]}
        print(f"decode profile {name}: {out[name]['rollout_s']} s, {out[name]['ms_per_decoding_step']} ms/step", flush=True)
    return out


def write(path: Path, result: dict) -> None:
    path.write_text(json.dumps(result, indent=1))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("3b", "tiny"), default="3b")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--parts", default="twins,grpo,trl,profile")
    ap.add_argument("--variants", default="full,full_no_graph,lora,frozen_vision")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", default="gpu_check.json")
    ap.add_argument("--budget-s", type=float, default=420.0, help="no new GRPO variant starts after this many seconds")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    parts = args.parts.split(",")
    path = Path(args.json)
    result = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "size": args.size, "device": args.device,
              "versions": versions(), "work": WORK[args.size]}
    write(path, result)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "twins" in parts:
            result["twins"] = run_twins(args.device, root / "twins")
            result["twins_s"] = time.perf_counter() - t0
            write(path, result)
        if {"grpo", "trl", "profile"} & set(parts):
            cfg = prepare_work(root / "grpo", args.size, args.device, args.steps, args.warmup)
            result["model_build_s"] = cfg["build_s"]
            if "grpo" in parts or "trl" in parts:
                variants = args.variants.split(",") if "grpo" in parts else ["full"]
                result["grpo"] = run_grpo(cfg, variants, "trl" in parts, t0 + args.budget_s)
                write(path, result)
            if "profile" in parts:
                result["decode_profile"] = profile_decode(cfg)
                write(path, result)
    result["total_s"] = time.perf_counter() - t0
    write(path, result)
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

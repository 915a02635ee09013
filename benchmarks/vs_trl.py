"""lit-vr1 against TRL's GRPOTrainer on the same GRPO work, side by side, on the CPU.

    pip install -e ".[bench]"          # TRL and datasets: for this benchmark only
    python benchmarks/vs_trl.py [--prompts 4] [--generations 8] [--completion 64] [--image 224]
                                [--beta 0.04] [--steps 4] [--warmup 1] [--repeats 2] [--micro 8]
                                [--lit-options shared_prompt=false,freeze_vision=true] [--trl-freeze-vision]
                                [--sweep generations=4,8,16] [--trainers lit,trl] [--flops]
                                [--trl-keep-freed-memory] [--precision 32-true|bf16-mixed]

Both trainers load the very same tiny random Qwen2.5-VL with the proportions of the real
3B (``benchmarks/bench_model.py``), get the same synthetic prompts (one image each, resized
to ``--image`` px square) and do the same work per optimiser step: ``--prompts`` prompts x
G completions of exactly ``--completion`` tokens (the end-of-turn token is suppressed in
both, so no completion ends early), sampling at temperature 1, the k3 KL to a frozen
reference with ``--beta``, the clipped GRPO loss (TRL ``loss_type="grpo"``), one optimiser
step per rollout (so neither needs an old-policy pass), micro-batches of ``--micro``
completions, AdamW lr 1e-5, gradient clipping at 1.0, the same reward function, float32
weights and ``--precision`` (float32, or bf16 autocast: TRL's own default).

Each trainer runs in its own Python process (peak RSS is per process), alternating
lit / TRL / TRL / lit ... over ``--repeats``; the first ``--warmup`` steps of each run are
not timed. The model and data are built in a child process of their own, so the parent
stays light. Printed: seconds per optimiser step (median over all timed steps; in brackets
the range of the runs' medians), completion tokens per second (P x G x T / that median),
peak resident memory (each process's own VmHWM, median over runs), and lit-vr1 / TRL
ratios. Every rollout of both is checked to be P x G x T tokens. ``--json`` writes every
figure, the versions and both trainers' effective arguments.

With ``LIT_VR1_KEEP_FREED_MEMORY=1`` in the environment lit-vr1's process keeps freed memory
mapped for reuse (``lit_vr1/allocator.py``, off by default); ``--trl-keep-freed-memory`` starts
TRL's process with the same glibc thresholds. The JSON records which each had.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def peak_mib() -> float:
    """This process's own peak resident memory (VmHWM), MiB. Not ru_maxrss: on Linux a child
    starts from its parent's peak there, so a parent that built the model would inflate it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best there is


class FlopCount:
    """The arithmetic of one step, counted by torch's FlopCounterMode (matrix products,
    convolutions, attention; elementwise work is not counted), over the first warm-up step (its
    time is not measured). The CPU's SDPA kernels are counted with the formulas of the GPU's."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.mode, self.total = enabled, None, None

    def start(self) -> None:
        if not self.enabled or self.total is not None or self.mode is not None:
            return
        import torch
        from torch.utils.flop_counter import FlopCounterMode, flop_registry

        def as_is(formula):  # a registered formula already reads shapes: not to be wrapped again
            def counted(*args, **kwargs):
                return formula(*args, **kwargs)

            counted._get_raw = True
            return counted

        aten = torch.ops.aten
        cpu = {aten._scaled_dot_product_flash_attention_for_cpu:
               as_is(flop_registry[aten._scaled_dot_product_flash_attention]),
               aten._scaled_dot_product_flash_attention_for_cpu_backward:
               as_is(flop_registry[aten._scaled_dot_product_flash_attention_backward])}
        self.mode = FlopCounterMode(display=False, custom_mapping=cpu)
        self.mode.__enter__()

    def stop(self) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.total, self.mode = self.mode.get_total_flops(), None


def versions() -> dict:
    """The versions that decide the figures."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "trl", "accelerate", "lightning", "peft", "lit-vr1"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def toy_reward(texts: list[str]) -> list[float]:
    """A cheap deterministic reward that differs between completions (so advantages are not 0)."""
    return [(sum(map(ord, t)) % 97) / 97.0 for t in texts]


# -- data and model shared by both trainers ---------------------------------------------------
def prepare(root: str, image_px: int, num_samples: int) -> tuple[str, str]:
    """The benchmark model (``root/model``) and synthetic REC data (``root/data``)."""
    sys.path.insert(0, HERE)
    import bench_model

    from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic

    model_dir, data_dir = os.path.join(root, "model"), os.path.join(root, "data")
    if not os.path.isdir(model_dir):
        bench_model.build(model_dir, image_px=image_px)
    if not os.path.isdir(data_dir):
        write_synthetic(data_dir, SyntheticSpec(num_samples=num_samples, canvas=image_px), "train")
    return model_dir, data_dir


def load_samples(data_dir: str, n: int):
    from lit_vr1.data.jsonl import JsonlDataset

    ds = JsonlDataset(os.path.join(data_dir, "train.jsonl"), os.path.join(data_dir, "images"), "qwen_rec")
    return [ds[i] for i in range(n)]


def write_trl_prompts(data_dir: str, model_dir: str, n: int) -> None:
    """The same prompts as plain JSON (chat messages + image path) and the token ids both
    trainers never sample, so that the TRL process imports nothing of lit-vr1 (its imports
    would count in TRL's peak RSS)."""
    from transformers import AutoProcessor

    from lit_vr1.data.jsonl import JsonlDataset
    from lit_vr1.models.families import vision_token_ids

    ds = JsonlDataset(os.path.join(data_dir, "train.jsonl"), os.path.join(data_dir, "images"), "qwen_rec")
    rows = [{"prompt": ds[i].messages, "image": ds.records[i].image_paths[0]} for i in range(n)]
    processor = AutoProcessor.from_pretrained(model_dir)
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    with open(os.path.join(data_dir, "trl_prompts.json"), "w") as f:
        json.dump({"rows": rows, "suppress_ids": [eos, *vision_token_ids(processor)]}, f)


# -- lit-vr1 --------------------------------------------------------------------------------
def run_lit(cfg: dict) -> dict:

    import lightning as L
    from torch.utils.data import DataLoader

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.rewards.base import Reward

    class Toy(Reward):
        default_name = "toy"

        def score(self, completions, contexts):
            return toy_reward(completions)

    opts = cfg["lit_options"]
    if not opts.get("reuse_features", True):  # measure a frozen tower without reusing its features
        from lit_vr1 import shared_prompt

        shared_prompt.vision_frozen = lambda model: False  # the rollout then keeps no features to reuse
    if not opts.get("preallocated_cache", True):  # measure the sampler on transformers' growing (torch.cat) cache
        from lit_vr1 import kv_cache

        kv_cache.reserve = lambda cache, extra: 0
    L.seed_everything(0, verbose=False)
    n = cfg["prompts"] * cfg["generations"]
    grpo = GRPOConfig(num_generations=cfg["generations"], max_completion_length=cfg["completion"], beta=cfg["beta"],
                      micro_batch_size=cfg["micro"], loss_type="grpo", shared_prompt=opts.get("shared_prompt", True),
                      cuda_graph=opts.get("cuda_graph", True))
    lora = None
    if cfg.get("lora"):
        from lit_vr1.models.lora import LoraSpec

        lora = LoraSpec(r=16, alpha=32, dropout=0.05)
    module = GRPOModule(model=cfg["model_dir"], rewards=[Toy()], grpo=grpo, lora=lora,
                        freeze_vision=opts.get("freeze_vision", False), freeze_merger=opts.get("freeze_vision", False),
                        gradient_checkpointing=cfg.get("gradient_checkpointing", False))
    eos = module.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    loop = module.loop
    loop.suppress_ids = loop.suppress_ids + (eos,)  # never sampled (nor scored): every completion is full length
    samples = load_samples(cfg["data_dir"], cfg["prompts"] * (cfg["warmup"] + cfg["steps"]))
    times = []
    loaded: list[float] = []

    class Timer(L.Callback):
        def on_fit_start(self, trainer, pl_module):
            # Lightning built the model in configure_model, as `lit-vr1 fit` does: on the run's device
            # (straight onto the GPU there), the reference copied where the policy is
            loaded.append(peak_mib())
            prof.attach_towers(pl_module.policy, pl_module.ref_model)

        def on_train_batch_start(self, *a):
            if len(times) == cfg["warmup"]:
                prof.reset()
            if not times:
                flops.start()
            self.t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, *a):
            times.append(time.perf_counter() - self.t)
            flops.stop()
            lengths.append(int(pl_module.loop.last_rollout.completion_mask.sum()))

    lengths: list[int] = []
    flops = FlopCount(cfg.get("flops", False))
    prof = Profile()
    prof.wrap(loop, "rollout", "rollout")
    prof.wrap(loop, "prepare_logprobs", "nograd_logprobs")
    trainer = L.Trainer(accelerator="gpu" if cfg.get("device") == "cuda" else "cpu", devices=1,
                        precision=cfg.get("precision", "32-true"), max_steps=cfg["warmup"] + cfg["steps"], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Timer()])
    trainer.fit(module, DataLoader(samples, batch_size=cfg["prompts"], collate_fn=list))
    tokens = n * cfg["completion"]
    assert lengths == [tokens] * len(times), f"a rollout ended early: completion tokens per rollout {lengths}"
    from lit_vr1.decode_graph import REFUSED_ATTRIBUTE

    return {"step_s": times[cfg["warmup"]:], "tokens": tokens, "loaded_mib": loaded[0], "profile": prof.per_step(cfg["steps"]),
            "flops": flops.total,
            "graph_refused": getattr(module.policy, REFUSED_ATTRIBUTE, None),
            "effective_args": {"num_generations": grpo.num_generations, "max_completion_length": grpo.max_completion_length,
                               "beta": grpo.beta, "loss_type": grpo.loss_type, "micro_batch_size": grpo.micro_batch_size,
                               "gradient_checkpointing": module.gradient_checkpointing, "lr": 1e-5,
                               "gradient_clip_val": grpo.gradient_clip_val}}


class Profile:
    """Where a step's time goes, the same way for both trainers: seconds in the rollout
    (sampling), in the no-grad log-prob passes (reference, old policy), in the vision
    towers' forward (inside both and in training), and the images the towers encode.
    Methods are wrapped with timers; the towers get forward hooks."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget what was measured (the warm-up steps)."""
        self.seconds = {"rollout": 0.0, "nograd_logprobs": 0.0, "vision_forward": 0.0}
        self.images = 0

    def wrap(self, obj, method: str, key: str, only_without_grad: bool = False) -> None:
        import torch

        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            if only_without_grad and torch.is_grad_enabled():
                return inner(*args, **kwargs)
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - t

        setattr(obj, method, timed)

    def attach_towers(self, *models) -> None:
        for model in models:
            if model is None:
                continue
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            base.model.visual.register_forward_pre_hook(self._start)
            base.model.visual.register_forward_hook(self._stop, with_kwargs=True)

    def _start(self, module, args) -> None:
        self._t = time.perf_counter()

    def _stop(self, module, args, kwargs, out) -> None:
        self.seconds["vision_forward"] += time.perf_counter() - self._t
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        self.images += int(grid.shape[0]) if grid is not None else 1

    def per_step(self, steps: int) -> dict:
        return {**{k: v / steps for k, v in self.seconds.items()}, "images_encoded": self.images / steps}


# -- TRL ------------------------------------------------------------------------------------
def run_trl(cfg: dict) -> dict:
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    # left padding, as TRL sets it when it loads a processor itself
    processor = AutoProcessor.from_pretrained(cfg["model_dir"], padding_side="left")
    with open(os.path.join(cfg["data_dir"], "trl_prompts.json")) as f:
        prompts = json.load(f)
    model = AutoModelForImageTextToText.from_pretrained(cfg["model_dir"], dtype=torch.float32)
    if cfg["trl_freeze_vision"]:
        model.model.visual.requires_grad_(False)
    peft_config = None
    if cfg.get("lora"):  # the same adapters as lit-vr1's default: the language model's projections
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                                 target_modules=r"(.*\.)?language_model\.(.*\.)?(q_proj|k_proj|v_proj|o_proj|gate_proj"
                                                r"|up_proj|down_proj)")
    on_gpu = cfg.get("device") == "cuda"
    bf16 = cfg.get("precision", "32-true").startswith("bf16")
    n = cfg["prompts"] * cfg["generations"]
    data = Dataset.from_list([{"prompt": r["prompt"], "image": Image.open(r["image"]).convert("RGB")}
                              for r in prompts["rows"]])

    def reward(prompts, completions, **kwargs):
        return toy_reward([c[0]["content"] if isinstance(c, list) else c for c in completions])

    args = GRPOConfig(
        output_dir=cfg["tmp"], per_device_train_batch_size=cfg["micro"], gradient_accumulation_steps=n // cfg["micro"],
        num_generations=cfg["generations"], max_completion_length=cfg["completion"], beta=cfg["beta"],
        loss_type="grpo", learning_rate=1e-5, max_grad_norm=1.0, max_steps=cfg["warmup"] + cfg["steps"],
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=not on_gpu, bf16=bf16, fp16=False, seed=0,
        # TRL's GRPOConfig turns gradient checkpointing on by default; set as on lit-vr1's side
        gradient_checkpointing=cfg.get("gradient_checkpointing", False),
        shuffle_dataset=False, dataloader_num_workers=0,
        # as lit-vr1: image/video placeholders are never sampled (a sampled <|image_pad|> breaks TRL's next forward:
        # "Image features and image tokens do not match"), and the end-of-turn token neither (fixed length)
        generation_kwargs={"suppress_tokens": prompts["suppress_ids"]},
        disable_tqdm=True,
    )
    times = []
    flops = FlopCount(cfg.get("flops", False))

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if len(times) == cfg["warmup"]:
                prof.reset()
            if not times:
                flops.start()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)
            flops.stop()

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=processor,
                          callbacks=[Timer()], peft_config=peft_config)
    checkpointing = bool(getattr(trainer.model, "is_gradient_checkpointing", False))
    assert checkpointing == cfg.get("gradient_checkpointing", False), f"TRL's gradient checkpointing is {checkpointing}"
    prof = Profile()
    prof.attach_towers(trainer.model, getattr(trainer, "ref_model", None))
    prof.wrap(trainer, "_generate_single_turn", "rollout")
    prof.wrap(trainer, "_get_per_token_logps_and_entropies", "nograd_logprobs", only_without_grad=True)
    loaded = peak_mib()
    trainer.train()
    lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]
    assert len(lengths) == len(times) and all(x == cfg["completion"] for x in lengths), \
        f"a rollout ended early: mean completion lengths {lengths} over {len(times)} steps"
    keys = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation", "generation_batch_size",
            "num_generations", "max_completion_length", "beta", "loss_type", "learning_rate", "max_grad_norm",
            "gradient_checkpointing", "scale_rewards", "num_iterations", "epsilon", "temperature", "bf16",
            "disable_dropout", "use_vllm")
    effective = {k: getattr(trainer.args, k, None) for k in keys}
    effective["model_is_gradient_checkpointing"] = checkpointing
    return {"step_s": times[cfg["warmup"]:], "tokens": n * cfg["completion"], "loaded_mib": loaded,
            "profile": prof.per_step(cfg["steps"]), "flops": flops.total, "effective_args": effective}


# -- parent ---------------------------------------------------------------------------------
def child_main(trainer: str, cfg_json: str) -> None:
    import torch

    cfg = json.loads(cfg_json)
    if cfg.get("device") != "cuda":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = (run_lit if trainer == "lit" else run_trl)(cfg)
    out["peak_mib"] = peak_mib()
    out["versions"] = versions()
    out["keep_freed_memory"] = freed_memory_kept(trainer)
    if cfg.get("device") == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out), flush=True)


# glibc's thresholds as lit_vr1.allocator sets them, given to TRL's process by --trl-keep-freed-memory
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def freed_memory_kept(trainer: str) -> bool:
    """Whether this child keeps freed memory mapped (lit-vr1: its allocator module did it;
    TRL: the environment set glibc's thresholds before the process started)."""
    if trainer == "lit":
        from lit_vr1 import allocator

        return allocator.applied()
    return all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())


def run_child(trainer: str, cfg: dict) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    if trainer == "trl" and cfg.get("trl_keep_freed_memory"):
        env.update(MALLOC_ENV)
    proc = subprocess.run([sys.executable, __file__, "--child", trainer, json.dumps(cfg)], capture_output=True,
                          text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{trainer} run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(line[len("RESULT "):])


def measure(cfg: dict, trainers: list[str], repeats: int) -> dict:
    """Alternating runs of each trainer; medians over all timed steps and over runs."""
    runs = {t: [] for t in trainers}
    for r in range(repeats):
        for t in (trainers if r % 2 == 0 else trainers[::-1]):
            runs[t].append(run_child(t, cfg))
            print(f"  {t} run {r + 1}: steps {[round(s, 2) for s in runs[t][-1]['step_s']]} s, "
                  f"peak {runs[t][-1]['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    out = {}
    for t, rs in runs.items():
        step = statistics.median([s for r in rs for s in r["step_s"]])
        per_run = [statistics.median(r["step_s"]) for r in rs]
        out[t] = {"step_s": step, "tokens_per_s": rs[0]["tokens"] / step,
                  "step_s_per_run": per_run, "step_s_spread": max(per_run) - min(per_run),
                  "peak_mib": statistics.median(r["peak_mib"] for r in rs),
                  "peak_mib_per_run": [r["peak_mib"] for r in rs],
                  **({"peak_gpu_mib": statistics.median(r["peak_gpu_mib"] for r in rs)} if "peak_gpu_mib" in rs[0] else {}),
                  "loaded_mib": statistics.median(r["loaded_mib"] for r in rs),
                  "profile": {k: statistics.median(r["profile"][k] for r in rs) for k in rs[0]["profile"]},
                  "flops_per_step": rs[0].get("flops"), "runs": rs}
    return out


def table_row(label: str, res: dict) -> str:
    lit, trl = res.get("lit"), res.get("trl")
    cells = [label]
    for r in (lit, trl):
        cells += [f"{r['step_s']:.2f} ({min(r['step_s_per_run']):.2f}-{max(r['step_s_per_run']):.2f})",
                  f"{r['tokens_per_s']:.0f}", f"{r['peak_mib']:.0f}"] if r else ["", "", ""]
    if lit and trl:
        cells += [f"{lit['tokens_per_s'] / trl['tokens_per_s']:.2f}x", f"{lit['peak_mib'] / trl['peak_mib']:.2f}x"]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| setting | lit-vr1 s/step (run medians) | lit-vr1 tok/s | lit-vr1 peak MiB | TRL s/step (run medians) "
          "| TRL tok/s | TRL peak MiB "
          "| tok/s ratio | peak RSS ratio |\n|---|---|---|---|---|---|---|---|---|")


PROFILE_HEADER = ("| setting | trainer | step s | rollout s | no-grad log-prob passes s | rest (policy fwd+bwd, optimiser) s "
                  "| vision forward s | images encoded | GFLOP per step |\n|---|---|---|---|---|---|---|---|---|")


def profile_rows(label: str, res: dict) -> list[str]:
    rows = []
    for name, r in res.items():
        p = r["profile"]
        rest = r["step_s"] - p["rollout"] - p["nograd_logprobs"]
        gflop = f"{r['flops_per_step'] / 1e9:.1f}" if r.get("flops_per_step") else ""
        rows.append(f"| {label} | {name} | {r['step_s']:.2f} | {p['rollout']:.2f} | {p['nograd_logprobs']:.2f} | {rest:.2f} "
                    f"| {p['vision_forward']:.2f} | {p['images_encoded']:.0f} | {gflop} |")
    return rows


def parse_options(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        out[key] = value.lower() in ("1", "true", "yes")
    return out


def prepare_in_child(cfg: dict, root: str) -> tuple[str, str]:
    """Build the model and data in a child process, so that the parent stays light (it
    imports neither torch nor lit-vr1) and no trainer's process inherits anything of it."""
    n = cfg["prompts"] * (cfg["warmup"] + cfg["steps"])
    proc = subprocess.run([sys.executable, __file__, "--prepare", root, str(cfg["image"]), str(n)], capture_output=True,
                          text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"preparing the model and data failed:\n{proc.stderr[-4000:]}")
    return os.path.join(root, "model"), os.path.join(root, "data")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(sys.argv[2], sys.argv[3])
    if len(sys.argv) > 1 and sys.argv[1] == "--prepare":
        root, image_px, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        model_dir, data_dir = prepare(root, image_px, n)
        write_trl_prompts(data_dir, model_dir, n)
        return None
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--completion", type=int, default=64)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--lit-options", default="", help="switches: shared_prompt, freeze_vision (tower and merger), reuse_features, "
                   "preallocated_cache; "
                   "e.g. shared_prompt=false or freeze_vision=true,reuse_features=false")
    p.add_argument("--trl-freeze-vision", action="store_true", help="freeze TRL's vision tower too")
    p.add_argument("--trl-keep-freed-memory", action="store_true",
                   help="start TRL's process with the glibc thresholds lit-vr1 sets for itself under "
                        "LIT_VR1_KEEP_FREED_MEMORY=1 (lit_vr1/allocator.py; MALLOC_MMAP_THRESHOLD_ and "
                        "MALLOC_TRIM_THRESHOLD_ 1 GiB); that variable in the environment turns lit-vr1's on")
    p.add_argument("--trainers", default="lit,trl")
    p.add_argument("--sweep", default="", help="one setting over values, e.g. generations=4,8,16 or image=112,224,448")
    p.add_argument("--flops", action="store_true", help="count each trainer's arithmetic over its first (untimed) "
                   "warm-up step (torch's FlopCounterMode: matrix products, convolutions, attention); on the CPU "
                   "(on CUDA lit-vr1's decoding steps replay a captured graph, which dispatches nothing to count)")
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"],
                   help="both trainers: float32 weights; bf16-mixed runs their forward and backward under bf16 autocast "
                        "(lit-vr1: trainer.precision; TRL: GRPOConfig bf16, its own default)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.flops and a.warmup < 1:
        p.error("--flops counts the first warm-up step, so that no timed step pays for the counting: --warmup 1 or more")
    base = {k: getattr(a, k) for k in ("prompts", "generations", "completion", "image", "beta", "steps", "warmup",
                                       "micro", "precision")}
    base["lit_options"], base["trl_freeze_vision"] = parse_options(a.lit_options), a.trl_freeze_vision
    base["flops"], base["trl_keep_freed_memory"] = a.flops, a.trl_keep_freed_memory
    key, values = (a.sweep.split("=") + [""])[:2] if a.sweep else ("generations", str(a.generations))
    results, profiles = [], []
    print(HEADER)
    for value in values.split(","):
        cfg = dict(base, **{key: type(base[key])(value)})
        with tempfile.TemporaryDirectory() as root:
            cfg["model_dir"], cfg["data_dir"] = prepare_in_child(cfg, root)
            cfg["tmp"] = os.path.join(root, "trl_out")
            res = measure(cfg, a.trainers.split(","), a.repeats)
        label = (f"P={cfg['prompts']} G={cfg['generations']} T={cfg['completion']} {cfg['image']}px "
                 f"beta={cfg['beta']}" + (f" {a.lit_options}" if a.lit_options else ""))
        print(table_row(label, res), flush=True)
        profiles += profile_rows(label, res)
        results.append({"config": {k: v for k, v in cfg.items() if k not in ("model_dir", "data_dir", "tmp")},
                        "versions": next(iter(res.values()))["runs"][0]["versions"],
                        "effective_args": {t: r["runs"][0]["effective_args"] for t, r in res.items()},
                        "results": res})
    print("\nWhere the time goes (per optimiser step, profile timers: medians over runs)\n" + PROFILE_HEADER)
    print("\n".join(profiles))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

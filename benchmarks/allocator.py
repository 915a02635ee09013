"""Training steps with freed memory kept for reuse (lit_vr1.allocator) against glibc's defaults.

    python benchmarks/allocator.py [--pairs 3] [--steps 12] [--warmup 3] [--threads 2]

Each measurement is a child process (the setting is per process): ``lit-vr1 fit`` of
configs/sft_detection.yaml (the detection demo's cold start: 32 images at 112 px) and of
configs/grpo_synthetic.yaml (the REC demo's GRPO: 8 prompts x G=8, from a random tiny model, so
every completion runs to its 40-token cap), with ``LIT_VR1_KEEP_FREED_MEMORY=1`` and ``=0``
alternating, off first. A child times its steps after ``--warmup`` (the mean wall seconds per
step from the end of the last warm-up step), the process's system CPU time over them (page
faults show there) and its peak resident size (VmHWM). Prints each run and the ratios of the
medians; writes a JSON. Nothing numeric differs between the two (tests/test_allocator.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPES = {"sft": ["--config", "configs/sft_detection.yaml", "--data.init_args.synthetic_dir={data}/detection"],
           "grpo": ["--config", "configs/grpo_synthetic.yaml", "--model.init_args.model=tiny:qwen2_5_vl",
                    "--data.init_args.synthetic_dir={data}/rec"]}


def child(recipe: str, steps: int, warmup: int, threads: int, data: str) -> dict:
    """One fit of ``steps + warmup`` steps in this process; its timings."""
    import torch
    from lightning.pytorch import Callback

    from lit_vr1 import allocator
    from lit_vr1.cli import LitVR1CLI

    torch.set_num_threads(threads)

    class Clock(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.cpu: list[os.times_result] = []

        def on_train_batch_end(self, *args) -> None:
            self.ends.append(time.perf_counter())
            self.cpu.append(os.times())

    clock = Clock()
    args = [a.format(data=data) for a in RECIPES[recipe]]
    cli = LitVR1CLI(args=[*args, f"--trainer.max_steps={steps + warmup}", "--trainer.logger=false",
                          "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
                          "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                          "--trainer.enable_model_summary=false"], run=False)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, cli.datamodule)
    first, last = warmup - 1, len(clock.ends) - 1
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return {"s_per_step": (clock.ends[last] - clock.ends[first]) / (last - first),
            "sys_s_per_step": (clock.cpu[last].system - clock.cpu[first].system) / (last - first),
            "user_s_per_step": (clock.cpu[last].user - clock.cpu[first].user) / (last - first),
            "peak_rss_mib": hwm / 1024, "keep_freed_memory": allocator.applied(),
            "mmap_threshold": allocator.mmap_threshold()}


def run_child(recipe: str, keep: bool, a: argparse.Namespace, data: str) -> dict:
    env = {**os.environ, "LIT_VR1_KEEP_FREED_MEMORY": "1" if keep else "0",
           "OMP_NUM_THREADS": str(a.threads)}
    out = subprocess.run([sys.executable, __file__, "--child", recipe, "--steps", str(a.steps), "--warmup",
                          str(a.warmup), "--threads", str(a.threads), "--data", data],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{recipe} child failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["keep_freed_memory"] != keep:
        raise SystemExit(f"{recipe} child: keep_freed_memory is {result['keep_freed_memory']}, asked {keep} "
                         "(refused by this C library?)")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipes", default="sft,grpo")
    ap.add_argument("--out", default=f"benchmarks/results/allocator_{time.strftime('%Y-%m-%d')}.json")
    ap.add_argument("--child", choices=list(RECIPES))
    ap.add_argument("--data", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.warmup < 1:
        ap.error("--warmup must be at least 1 (the first step's end starts the clock)")
    if a.child:
        print(json.dumps(child(a.child, a.steps, a.warmup, a.threads, a.data)))
        return
    runs: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as data:
        for recipe in a.recipes.split(","):
            runs[recipe] = {"off": [], "on": []}
            for pair in range(a.pairs):
                for keep in (False, True):
                    r = run_child(recipe, keep, a, data)
                    runs[recipe]["on" if keep else "off"].append(r)
                    print(f"{recipe} pair {pair} {'on ' if keep else 'off'}: {r['s_per_step']:.4f} s/step, "
                          f"sys {r['sys_s_per_step']:.4f} s/step, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    summary = {}
    for recipe, by in runs.items():
        med = {k: {f: statistics.median(r[f] for r in v) for f in ("s_per_step", "sys_s_per_step", "peak_rss_mib")}
               for k, v in by.items()}
        summary[recipe] = {**med, "speed_up": med["off"]["s_per_step"] / med["on"]["s_per_step"],
                           "peak_rss_ratio": med["on"]["peak_rss_mib"] / med["off"]["peak_rss_mib"]}
        print(f"{recipe}: off {med['off']['s_per_step']:.4f} s/step, on {med['on']['s_per_step']:.4f}: "
              f"{summary[recipe]['speed_up']:.2f}x; peak RSS {summary[recipe]['peak_rss_ratio']:.3f}x")
    import torch

    record = {"args": {k: v for k, v in vars(a).items() if k not in ("child", "data")}, "summary": summary,
              "runs": runs, "torch": torch.__version__, "python": platform.python_version(),
              "glibc": platform.libc_ver()[1], "machine": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

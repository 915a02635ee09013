"""DDP with micro-batches: one gradient all-reduce per optimiser step against one per micro-batch.

    python benchmarks/ddp_micro_batches.py [--micro 4] [--steps 4] [--repeats 2]

Two CPU processes (gloo, one thread each, started by torchrun) train the speed benchmark's
model (``bench_model.py``: 10.6M parameters, 224 px images) with GRPO: 2 prompts per process
x G = 8 completions of exactly 32 tokens, beta 0.04, AdamW, micro-batches of ``--micro``
rows. lit-vr1 keeps the gradients of every micro-batch but the last local
(``GRPOModule.gradient_sync``: Lightning's ``block_backward_sync``, DDP's ``no_sync``), so
DDP all-reduces once per step; the other way (DDP's default under manual optimisation)
all-reduces after every micro-batch's backward. Runs alternate on / off / off / on; each
reports its step times after one warm-up step and the buckets DDP reduced per step (a
counting communication hook). The JSON goes to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def rank_main(mode: str, cfg: dict) -> None:
    """One process of a run (under torchrun); rank 0 writes the result to cfg["out"]."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, HERE)
    import lightning as L
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.utils.data import DataLoader
    from vs_trl import load_samples, toy_reward

    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.rewards.base import Reward

    class Toy(Reward):
        default_name = "toy"

        def score(self, completions, contexts):
            return toy_reward(completions)

    L.seed_everything(0, verbose=False)
    grpo = GRPOConfig(num_generations=8, max_completion_length=cfg["completion"], beta=0.04,
                      micro_batch_size=cfg["micro"], loss_type="grpo")
    module = GRPOModule(model=cfg["model_dir"], rewards=[Toy()], grpo=grpo)
    if mode == "off":  # every micro-batch's backward all-reduces (DDP's default under manual optimisation)
        import contextlib

        module.gradient_sync = lambda enabled: contextlib.nullcontext()
    counts = {"buckets": 0}

    def counting_hook(state, bucket):
        counts["buckets"] += 1
        return allreduce_hook(state, bucket)

    times, buckets = [], []

    class Timer(L.Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.strategy.model.register_comm_hook(None, counting_hook)
            eos = pl_module.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
            pl_module.loop.suppress_ids = pl_module.loop.suppress_ids + (eos,)  # every completion full length

        def on_train_batch_start(self, *a):
            self.t, self.b = time.perf_counter(), counts["buckets"]

        def on_train_batch_end(self, *a):
            times.append(time.perf_counter() - self.t)
            buckets.append(counts["buckets"] - self.b)

    steps = cfg["warmup"] + cfg["steps"]
    samples = load_samples(cfg["data_dir"], 2 * 2 * steps)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Timer()], use_distributed_sampler=True)
    trainer.fit(module, DataLoader(samples, batch_size=2, collate_fn=list))
    if trainer.global_rank == 0:
        with open(cfg["out"], "w") as f:
            json.dump({"step_s": times[cfg["warmup"]:], "buckets_per_step": buckets[cfg["warmup"]:]}, f)


def run(mode: str, cfg: dict, root: str) -> dict:
    out = os.path.join(root, f"{mode}-{time.monotonic_ns()}.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, "--rank",
           mode, json.dumps({**cfg, "out": out})]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-4000:])
    with open(out) as f:
        return json.load(f)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rank":
        rank_main(sys.argv[2], json.loads(sys.argv[3]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--completion", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    sys.path.insert(0, HERE)
    from vs_trl import prepare

    root = tempfile.mkdtemp(prefix="lit-vr1-ddp-")
    model_dir, data_dir = prepare(root, 224, 2 * 2 * (a.warmup + a.steps))
    cfg = {"model_dir": model_dir, "data_dir": data_dir, "micro": a.micro, "completion": a.completion,
           "steps": a.steps, "warmup": a.warmup}
    order = [m for _ in range(a.repeats) for m in ("on", "off", "off", "on")][: 2 * a.repeats]
    results: dict[str, list[dict]] = {"on": [], "off": []}
    for mode in order:
        r = run(mode, cfg, root)
        results[mode].append(r)
        print(f"  {mode}: steps {[round(t, 2) for t in r['step_s']]} s, buckets per step {r['buckets_per_step']}")
    rows = {}
    for mode, runs in results.items():
        medians = [statistics.median(r["step_s"]) for r in runs]
        rows[mode] = {"step_s": statistics.median(medians), "run_medians": medians,
                      "buckets_per_step": runs[0]["buckets_per_step"][0]}
    print(f"\nDDP, 2 CPU processes (gloo), 2 prompts x G=8 x {a.completion} tokens per process, micro-batches of "
          f"{a.micro} ({16 // a.micro} per step):\n")
    print("| gradient all-reduce | s/step (run medians) | buckets all-reduced per step |\n|---|---|---|")
    label = {"on": "once per step (no_sync for all but the last micro-batch)", "off": "after every micro-batch"}
    for mode in ("on", "off"):
        r = rows[mode]
        print(f"| {label[mode]} | {r['step_s']:.2f} ({', '.join(f'{m:.2f}' for m in r['run_medians'])}) | "
              f"{r['buckets_per_step']} |")
    print(f"\nratio: {rows['off']['step_s'] / rows['on']['step_s']:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": vars(a), "results": rows, "runs": results}, f, indent=1)


if __name__ == "__main__":
    main()

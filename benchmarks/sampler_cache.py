"""The sampler with and without the preallocated key/value cache (lit_vr1.kv_cache), alone.

    python benchmarks/sampler_cache.py [--completion 32,64,128] [--repeats 3] [--json out.json]

One process, the benchmark model of ``vs_trl.py`` (10.6M parameters, 224 px images), 4
prompts x G=8 rows, end-of-turn suppressed so every row decodes the full length. For each
completion length the two caches alternate (growing, preallocated, growing, ...) with the
same seed; the tokens must be identical, and the medians over repeats are reported with
their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from lit_vr1 import kv_cache, shared_prompt  # noqa: E402
from lit_vr1.config import SamplingConfig  # noqa: E402
from lit_vr1.generation import encode_prompts  # noqa: E402
from lit_vr1.models.loading import load_model, load_processor  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--completion", default="32,64,128")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args()
    import vs_trl

    reserve = kv_cache.reserve
    rows = []
    with tempfile.TemporaryDirectory() as root:
        model_dir, data_dir = vs_trl.prepare(root, 224, 8)
        processor = load_processor(model_dir)
        model = load_model(model_dir, processor).eval()
        prompt, _ = encode_prompts(processor, vs_trl.load_samples(data_dir, 4))
        eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
        for length in map(int, a.completion.split(",")):
            cfg = SamplingConfig(max_completion_length=length, suppress_ids=(eos,))
            times: dict[str, list[float]] = {"growing": [], "preallocated": []}
            tokens = {}
            for i in range(a.repeats * 2 + 1):  # the first run warms up and is not timed
                name = ("preallocated", "growing")[i % 2]
                kv_cache.reserve = reserve if name == "preallocated" else (lambda cache, extra: 0)
                torch.manual_seed(0)
                t = time.perf_counter()
                with torch.no_grad():
                    out = shared_prompt.sample(model, prompt, 8, cfg, [eos], processor.tokenizer.pad_token_id)
                if i:
                    times[name].append(time.perf_counter() - t)
                tokens[name] = out.completion_ids
            kv_cache.reserve = reserve
            assert torch.equal(tokens["growing"], tokens["preallocated"]), "the two caches sampled different tokens"
            grow, pre = statistics.median(times["growing"]), statistics.median(times["preallocated"])
            rows.append({"completion": length, "rows": int(out.completion_ids.shape[0]), "growing_s": times["growing"],
                         "preallocated_s": times["preallocated"], "speedup": grow / pre})
            print(f"T={length}: growing cache {grow:.2f} s, preallocated {pre:.2f} s (medians of {a.repeats}), "
                  f"{grow / pre:.2f}x; per decoding step {1000 * grow / length:.0f} -> {1000 * pre / length:.0f} ms",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

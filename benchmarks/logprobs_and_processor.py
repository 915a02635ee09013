"""Two techniques measured on their own, outside a training step.

    python benchmarks/logprobs_and_processor.py [--vocab 151936] [--rows 8] [--prompt 160] [--completion 64]

1. Token log-probs. The plain way builds the LM head's logits at every position (prompt and
   completion) and a full-vocabulary log-softmax beside them, then gathers the sampled
   tokens. lit-vr1 keeps only the completion positions (``logits_to_keep``) and computes
   log p = logit[token] - logsumexp(logits) without a log-softmax tensor
   (``lit_vr1.loss.token_logprobs``). Measured on random hidden states and a random head of
   Qwen2.5-VL-3B's size (hidden 2048, vocabulary 151,936), forward and backward: seconds
   and the peak RSS each adds, each in its own process.
2. Processor passes. Peers repeat each prompt G times before the processor (its image is
   resized, normalised and patchified G times); lit-vr1 encodes each prompt once. Timed on
   the tiny model's Qwen2.5-VL processor with 224 px images, 4 prompts, G = 8.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def logprob_child(way: str, vocab: int, rows: int, prompt: int, completion: int) -> dict:
    import torch

    from lit_vr1.loss import token_logprobs

    torch.manual_seed(0)
    hidden = torch.randn(rows, prompt + completion, 2048, requires_grad=True)
    head = torch.nn.Linear(2048, vocab, bias=False)
    tokens = torch.randint(0, vocab, (rows, completion))
    before = peak_mib()
    t = time.perf_counter()
    if way == "full":
        logits = head(hidden)  # every position
        logp_all = logits.log_softmax(dim=-1)[:, -completion - 1:-1]
        logp = logp_all.gather(-1, tokens[..., None])[..., 0]
    else:
        logits = head(hidden[:, -completion - 1:-1])  # completion positions only
        logp = token_logprobs(logits, tokens)
    logp.sum().backward()
    return {"seconds": time.perf_counter() - t, "added_mib": peak_mib() - before}


def processor_seconds(repeat: int, reps: int = 5) -> float:
    from PIL import Image

    from lit_vr1.data.prompts import build_messages
    from lit_vr1.models.tiny import TinySpec, build_processor

    processor = build_processor("qwen2_5_vl", TinySpec(min_pixels=224 * 224, max_pixels=224 * 224))
    images = [Image.new("RGB", (224, 224), (40 * i, 90, 200 - 30 * i)) for i in range(4)]
    text = processor.apply_chat_template(build_messages("Locate the red square.", 1, "qwen_rec"),
                                         add_generation_prompt=True, tokenize=False)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        processor(text=[text] * (4 * repeat), images=[im for im in images for _ in range(repeat)], padding=True,
                  return_tensors="pt")
        times.append(time.perf_counter() - t)
    return sorted(times)[reps // 2]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(logprob_child(sys.argv[2], *map(int, sys.argv[3:7]))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=160)
    p.add_argument("--completion", type=int, default=64)
    a = p.parse_args()
    print(f"Token log-probs, {a.rows} rows x ({a.prompt} prompt + {a.completion} completion) positions, "
          f"vocabulary {a.vocab}, hidden 2048, forward + backward:\n")
    print("| way | seconds | peak RSS added (MiB) |\n|---|---|---|")
    for way in ("full", "lit-vr1"):
        out = subprocess.run([sys.executable, __file__, "--child", way, str(a.vocab), str(a.rows), str(a.prompt),
                              str(a.completion)], capture_output=True, text=True, check=True).stdout
        r = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])
        label = "full log-softmax at every position" if way == "full" else "completion positions, logit - logsumexp"
        print(f"| {label} | {r['seconds']:.2f} | {r['added_mib']:.0f} |")
    once, repeated = processor_seconds(1), processor_seconds(8)
    print("\nProcessor, 4 prompts with one 224 px image each, G = 8 (median of 5):\n")
    print("| way | seconds |\n|---|---|")
    print(f"| each prompt repeated G times (32 rows) | {repeated:.3f} |\n| each prompt once (4 rows) | {once:.3f} |")


if __name__ == "__main__":
    main()

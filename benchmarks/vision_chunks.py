"""The vision tower's attention batched per chunk length against transformers' one SDPA call
per chunk (lit_vr1.models.vision_attention), forward + backward of a Qwen2.5-VL tower at the
3B checkpoint's widths (hidden 1280, 16 heads, 112 px windows; fewer blocks, random weights).

    python benchmarks/vision_chunks.py [--depth 4] [--images 4] [--px 448] [--repeats 5] [--device cpu]

Both towers alternate in one process; the largest difference between their outputs and
gradients is recorded, and beside it the unpatched tower's own difference between two of its
passes (on a GPU the attention backward is not deterministic, so only a difference above that
says anything; on the CPU both are 0). float32 weights and inputs. Prints the median seconds per
forward + backward of each and their ratio, and writes a JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from lit_vr1.models import vision_attention


def tower(depth: int) -> torch.nn.Module:
    config = Qwen2_5_VLVisionConfig(depth=depth, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                    out_hidden_size=2048, window_size=112,
                                    fullatt_block_indexes=[depth - 1])
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Qwen2_5_VisionTransformerPretrainedModel._from_config(config).train()


def pass_time(model, pixels, grid) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    sync = torch.cuda.synchronize if pixels.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    out = model(pixels, grid_thw=grid)
    out = getattr(out, "pooler_output", out)
    out.float().square().mean().backward()
    sync()
    return time.perf_counter() - start, out.detach(), [p.grad for p in model.parameters()]


def max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--px", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=f"benchmarks/results/vision_chunks_{time.strftime('%Y-%m-%d')}.json")
    args = ap.parse_args()
    with torch.device(args.device):  # built where it runs: no host copy of a large tower
        plain = tower(args.depth)
    batched = copy.deepcopy(plain)
    vision_attention.batch_chunks(batched)
    side = args.px // 14
    grid = torch.tensor([[1, side, side]] * args.images, device=args.device)
    pixels = torch.randn(args.images * side * side, 3 * 2 * 14 * 14).to(args.device)
    times = {"transformers": [], "batched": []}
    difference = run_to_run = 0.0
    first = None
    for r in range(args.repeats + 1):
        a = pass_time(plain, pixels, grid)
        b = pass_time(batched, pixels, grid)
        difference = max(difference, max_difference([a[1], *a[2]], [b[1], *b[2]]))
        first = first or [a[1], *a[2]]
        run_to_run = max(run_to_run, max_difference(first, [a[1], *a[2]]))
        if r:  # the first pass of each warms up
            times["transformers"].append(a[0])
            times["batched"].append(b[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"args": vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "seconds": times, "median": med,
              "device": str(pixels.device), "speedup": med["transformers"] / med["batched"],
              "bit_identical": difference == 0.0, "max_abs_difference": difference,
              "transformers_run_to_run_difference": run_to_run}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"forward + backward of {args.images} images at {args.px} px, {args.depth} blocks: transformers "
          f"{med['transformers']:.3f} s, batched {med['batched']:.3f} s, {result['speedup']:.2f}x; "
          f"largest difference {difference:.3g} (transformers' own, pass to pass: {run_to_run:.3g}); wrote {args.out}")


if __name__ == "__main__":
    main()

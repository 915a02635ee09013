"""Why a decoding step of the bench model costs what it costs on this CPU: its matrix products
read every layer's weights once per token for 32 rows, so they run at the speed the weights
come from memory, not at the speed of the arithmetic.

    python benchmarks/decode_bandwidth.py [--json benchmarks/results/decode_bandwidth_<date>.json]

Measured at the bench model's decoding shapes (``benchmarks/bench_model.py``: 6 layers, hidden
256, SwiGLU MLP of 1376, vocabulary 3,200; P=4 x G=8 = 32 rows), float32, alternating in one
process (ratios, not absolute times, are what a shared machine gives):

- the six layers' MLPs (gate, up, down) over 32 rows, each layer with its own weights (as in the
  model: 25 MiB of weights, past the 2 MiB L2 caches), against the same six products over one
  layer's weights (1.4 MiB a matrix: they stay in cache);
- ``torch.multinomial`` of one token per row over the vocabulary, against the exponential draw
  inside it (Gumbel-style: ``argmax(p / q)``, ``q ~ Exp(1)``) and against an inverse-CDF draw
  (``searchsorted(cumsum(p), u)``), which would change every sampled token for a given seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def timed(fn, repeats: int, inner: int) -> list[float]:
    """Seconds per call of ``fn``: ``repeats`` samples of ``inner`` calls each, after a warm-up."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter() - t) / inner)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--mlp", type=int, default=1376)
    ap.add_argument("--vocab", type=int, default=3200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.rows, args.hidden)
    def weight(out: int, into: int) -> torch.Tensor:  # scaled as initialised: activations stay finite layer after layer
        return torch.randn(out, into) / into ** 0.5

    layers = [(weight(args.mlp, args.hidden), weight(args.mlp, args.hidden), weight(args.hidden, args.mlp))
              for _ in range(args.layers)]

    def mlps(weights) -> torch.Tensor:
        h = x
        for gate, up, down in weights:
            h = F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), down)
        return h

    one = [layers[0]] * args.layers
    probs = torch.rand(args.rows, args.vocab).softmax(-1)
    cases = {
        "mlps_distinct_weights": lambda: mlps(layers),
        "mlps_one_layers_weights": lambda: mlps(one),
        "multinomial": lambda: torch.multinomial(probs, 1),
        "exponential_draw": lambda: torch.empty_like(probs).exponential_(),
        "inverse_cdf_draw": lambda: torch.searchsorted(probs.cumsum(-1), torch.rand(args.rows, 1)),
    }
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):  # alternate the cases, so the machine's drift falls on all alike
        for name, fn in cases.items():
            samples[name] += timed(fn, 1, 20)
    med = {k: statistics.median(v) for k, v in samples.items()}
    flops = 2 * args.rows * args.hidden * args.mlp * 3 * args.layers
    mib = sum(w.numel() for layer in layers for w in layer) * 4 / 2**20
    print(f"six MLPs over {args.rows} rows ({flops / 1e6:.0f} MFLOP): distinct weights ({mib:.1f} MiB) "
          f"{med['mlps_distinct_weights'] * 1e3:.2f} ms ({flops / med['mlps_distinct_weights'] / 1e9:.0f} GFLOP/s), "
          f"one layer's weights {med['mlps_one_layers_weights'] * 1e3:.2f} ms "
          f"({flops / med['mlps_one_layers_weights'] / 1e9:.0f} GFLOP/s): "
          f"{med['mlps_distinct_weights'] / med['mlps_one_layers_weights']:.2f}x")
    print(f"one token per row over {args.vocab}: multinomial {med['multinomial'] * 1e3:.3f} ms, its exponential draw "
          f"{med['exponential_draw'] * 1e3:.3f} ms, an inverse-CDF draw {med['inverse_cdf_draw'] * 1e3:.3f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "median_s": med, "samples_s": samples, "weights_mib": mib, "mlp_flops": flops}, f, indent=1)


if __name__ == "__main__":
    main()

"""The benchmark's arithmetic counter (benchmarks/vs_trl.py --flops) counts matrix products and
the CPU's attention kernels, forward and backward."""

import importlib.util
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]


def _vs_trl():
    spec = importlib.util.spec_from_file_location("vs_trl", ROOT / "benchmarks" / "vs_trl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_matrix_products_and_cpu_attention_are_counted():
    count = _vs_trl().FlopCount(True)
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    q, k, v = (torch.randn(2, 3, 10, 8, requires_grad=True) for _ in range(3))
    count.start()
    a @ b
    F.scaled_dot_product_attention(q, k, v).sum().backward()
    count.stop()
    matmul = 2 * 8 * 16 * 4
    attention = 2 * (2 * 3 * 10 * 10 * 8) * 2  # q k^T and p v, 2 flops per multiply-add
    # flash attention's backward: five products of the forward's size (scores recomputed, dV, dP, dQ, dK)
    assert count.total == matmul + attention + attention * 5 // 2
    count.start()  # counts one step only
    a @ b
    count.stop()
    assert count.total == matmul + attention * 7 // 2


def test_a_disabled_counter_counts_nothing():
    count = _vs_trl().FlopCount(False)
    count.start()
    torch.randn(4, 4) @ torch.randn(4, 4)
    count.stop()
    assert count.total is None

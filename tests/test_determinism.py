"""A GRPO fit ends with bit-identical weights however busy the machine is.

The learning demo is a chaotic system: a difference in the last bit of one gradient grows
into another model within a few hundred steps. Such differences came from a CPU kernel
whose reduction order depends on which of two threads finishes first (the backward of
``keys[index]`` when a prompt's cache rows are repeated for its G completions), so a
loaded machine trained another model than a quiet one. Here the same short fit runs twice,
the second time beside processes that keep both cores busy.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import torch
from helpers import LengthReward, fit
from lightning.pytorch import seed_everything


def _fit_hash(samples) -> str:
    from lit_vr1.config import GRPOConfig
    from lit_vr1.grpo import GRPOModule

    seed_everything(0)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()], seed=0,
                        grpo=GRPOConfig(num_generations=8, max_completion_length=16, mini_batch_size=16,
                                        micro_batch_size=8),  # one prompt per micro-batch: the shared-cache path
                        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    fit(module, samples[:8], max_steps=4, batch_size=4)
    digest = hashlib.sha256()
    for key, value in sorted(module.policy.state_dict().items()):
        digest.update(key.encode() + value.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def test_a_grpo_fit_is_bit_identical_alone_and_beside_busy_processes(samples):
    quiet = _fit_hash(samples)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    try:
        busy = _fit_hash(samples)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert quiet == busy

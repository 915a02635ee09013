"""Shared fixtures: tiny random models and synthetic data, built once per test session."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run (derived from each test's name): a CI
# run must not pass or fail by the luck of the draw. A failure found here is then a failure
# every time, and is fixed, not retried.
settings.register_profile("lit-vr1", derandomize=True)
settings.load_profile("lit-vr1")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# Two threads at most; LIT_VR1_TEST_THREADS sets another count (tests/run_learning.py: one per
# learning shard, with OMP_NUM_THREADS for the processes a test starts, such as a judge server).
torch.set_num_threads(int(os.environ.get("LIT_VR1_TEST_THREADS") or min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_qwen25():
    from lit_vr1.models.tiny import build_tiny

    return build_tiny("qwen2_5_vl", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2():
    from lit_vr1.models.tiny import build_tiny

    return build_tiny("qwen2_vl", seed=0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root, SyntheticSpec(num_samples=16, canvas=112), "train")
    write_synthetic(root, SyntheticSpec(num_samples=8, canvas=112), "val")
    return root


@pytest.fixture(scope="session")
def samples(synthetic_dir):
    from lit_vr1.data.jsonl import JsonlDataset

    ds = JsonlDataset(str(synthetic_dir / "train.jsonl"), str(synthetic_dir / "images"), "qwen_rec")
    return [ds[i] for i in range(len(ds))]

"""Every seed recipe's tiny twin runs 2 GRPO steps on CPU, with the recipe's own rewards,
precision and dtype.

A twin is an overlay (configs/tiny/<recipe>.yaml) laid over the full-size recipe: the
model, data and trainer shrink; the reward list, the GRPO settings, ``trainer.precision``
(bf16-mixed: autocast runs on CPU too) and ``model.dtype`` stay the recipe's.
"""

from __future__ import annotations

import csv
import glob
import math
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lit_vr1.cli import LitVR1CLI
from lit_vr1.models.loading import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_check import rewards_overlay  # noqa: E402  (the GPU check lays the same overlay)

from tests.test_cli import ROOT

RECIPES = {
    # recipe: reward names it logs
    "grpo_rec_qwen25vl_3b": ["iou", "rec_format"],
    "grpo_ovd_qwen25vl_3b": ["od_length", "format"],
    "grpo_vision_r1_loc_qwen25vl_3b": ["dual_format", "loc_precision", "loc_recall"],
    "grpo_r1v_free_qwen25vl_3b": ["reward_model", "format"],
    "grpo_vision_r1_reason_qwen25vl_3b": ["hfrrf"],
}


@pytest.fixture(scope="module")
def judge_url():
    """The recipe's HTTP judge, for real: lit-vr1's LitServe judge server with a tiny random judge."""
    from lit_vr1.rewards.serve import launch

    with launch("tiny:qwen2_5_vl") as served:
        yield served.url + "/score"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_tiny_twin_runs_two_steps_with_the_recipes_rewards(recipe, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)  # runs/ and data/ of the twin land here
    args = ["fit", "--config", str(ROOT / "configs" / f"{recipe}.yaml"),
            "--config", str(ROOT / "configs" / "tiny" / f"{recipe}.yaml")]
    url = request.getfixturevalue("judge_url") if recipe == "grpo_r1v_free_qwen25vl_3b" else None
    args += ["--config", rewards_overlay(recipe, url, tmp_path / "rewards.yaml", "helpers.LengthReward")]
    t0 = time.perf_counter()
    cli = LitVR1CLI(args=args)
    wall = time.perf_counter() - t0
    recipe_cfg = yaml.safe_load(open(ROOT / "configs" / f"{recipe}.yaml"))
    assert str(cli.trainer.precision) == recipe_cfg["trainer"]["precision"] == "bf16-mixed"
    assert cli.model.dtype_name == recipe_cfg["model"]["init_args"]["dtype"]
    start = load_model(cli.model.model_name, cli.model.processor, cli.model.dtype_name, seed=cli.model.seed,
                       tiny_spec=cli.model.tiny_spec).state_dict()
    trained = {n: p for n, p in cli.model.policy.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in trained.values())  # float32 masters under bf16 autocast
    assert any(not torch.equal(p.detach(), start[n]) for n, p in trained.items())  # the weights moved
    rows = list(csv.DictReader(open(glob.glob(f"runs/tiny/{recipe}/logs/version_*/metrics.csv")[0])))
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss")})
    assert steps == [1, 2]
    for name in RECIPES[recipe]:
        values = [float(r[f"train/reward/{name}/mean"]) for r in rows if r.get(f"train/reward/{name}/mean")]
        assert values and all(math.isfinite(v) for v in values), name
    assert all(math.isfinite(float(r["train/loss"])) for r in rows if r.get("train/loss"))
    print(f"{recipe}: 2 steps, {wall:.1f} s")


def test_one_run_mixes_rec_and_counting_data_each_scored_by_its_own_rewards(tmp_path):
    """VLM-R1's routing through a real fit: a task per file, a reward per task, NaN elsewhere."""
    import torch
    from helpers import fit

    from lit_vr1.config import GRPOConfig
    from lit_vr1.data.jsonl import JsonlDataset
    from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic
    from lit_vr1.grpo import GRPOModule
    from lit_vr1.rewards import Accuracy, IoUReward

    files = [write_synthetic(tmp_path / t, SyntheticSpec(num_samples=4, canvas=56, task=t)) for t in ("rec", "count")]
    ds = JsonlDataset(f"{files[0]}:{files[1]}", f"{tmp_path / 'rec' / 'images'}:{tmp_path / 'count' / 'images'}",
                      "qwen_rec", reward_methods="rec:count")
    samples = [ds[i] for i in (0, 4, 1, 5)]  # each batch of 2 holds one REC and one counting prompt
    module = GRPOModule(model="tiny:qwen2_5_vl", min_pixels=3136, max_pixels=3136,
                        rewards=[IoUReward(tasks=["rec"]), Accuracy(mode="numeric", tasks=["count"])],
                        grpo=GRPOConfig(num_generations=2, max_completion_length=8, beta=0.0))
    logger = fit(module, samples, max_steps=2)
    tasks = [c.task for c in module.loop.last_rollout.contexts]
    assert tasks == ["rec", "rec", "count", "count"]
    per_reward = module.loop.last_scores.per_reward  # (2 rewards, 4 completions)
    is_rec = torch.tensor([t == "rec" for t in tasks])
    assert not per_reward[0, is_rec].isnan().any() and per_reward[0, ~is_rec].isnan().all()
    assert per_reward[1, is_rec].isnan().all() and not per_reward[1, ~is_rec].isnan().any()
    rows = [m for _, m in logger.rows if "train/loss" in m]
    assert len(rows) == 2 and all("train/reward/iou/mean" in m and "train/reward/accuracy/mean" in m for m in rows)

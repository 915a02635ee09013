"""Throughput of every reward: completions scored per second over a batch of 512.

    python benchmarks/reward_throughput.py [--n 512] [--repeats 3] [--skip-models]

Inputs are synthetic but shaped like real ones: REC answers with one JSON box on a
640x480 image seen at 644x476; detection answers with about 5 boxes against 5 ground-truth
objects; reasoning answers of about 200 words in <think>/<answer>. The judge rewards use a
tiny random Qwen2.5-VL (in-process, and behind lit-vr1's HTTP scorer on 127.0.0.1), so their
figures measure our plumbing, not a real judge's forward pass. Prints the median of
``--repeats`` timings per reward.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import time

from PIL import Image

from lit_vr1.rewards.accuracy import HFRRF, Accuracy
from lit_vr1.rewards.base import Reward, SampleContext
from lit_vr1.rewards.detection import DetectionMAP, DetectionWeightedSum, ODLength
from lit_vr1.rewards.length import CosineLength, RepetitionPenalty
from lit_vr1.rewards.rec import IoUReward, RecJsonFormat, ThinkAnswerFormat
from lit_vr1.rewards.vision_r1 import DualFormat, LocalizationPrecision, LocalizationRecall, ThresholdSchedule

SIZE, INPUT = (640, 480), (644, 476)
WORDS = "the shape on the left is red so we count it and then look at the next one which is blue".split()


def _box(rng: random.Random) -> list[int]:
    x, y = rng.randint(0, 500), rng.randint(0, 360)
    return [x, y, x + rng.randint(20, 140), y + rng.randint(20, 120)]


def _jitter(box: list[int], rng: random.Random) -> list[int]:
    return [v + rng.randint(-12, 12) for v in box]


def rec_batch(n: int, rng: random.Random) -> tuple[list[str], list[SampleContext]]:
    comps, ctxs = [], []
    for i in range(n):
        gt = _box(rng)
        pred = [round(v * INPUT[k % 2] / SIZE[k % 2]) for k, v in enumerate(_jitter(gt, rng))]
        comps.append(f"<think>{' '.join(rng.choices(WORDS, k=30))}</think><answer>"
                     + json.dumps([{"bbox_2d": pred, "label": "red circle"}]) + "</answer>")
        ctxs.append(SampleContext(id=str(i), prompt="Locate the red circle.", solution=json.dumps(gt),
                                  image_sizes=[SIZE], input_sizes=[INPUT]))
    return comps, ctxs


def detection_batch(n: int, rng: random.Random, objects: int = 5) -> tuple[list[str], list[SampleContext]]:
    labels = ["cat", "dog", "car", "person"]
    comps, ctxs = [], []
    for i in range(n):
        gt = [[rng.choice(labels), _box(rng)] for _ in range(objects)]
        preds = [{"bbox_2d": _jitter(b, rng), "label": lab} for lab, b in gt[: rng.randint(3, objects)]]
        preds += [{"bbox_2d": _box(rng), "label": rng.choice(labels)} for _ in range(rng.randint(0, 2))]
        comps.append(f"<think>{' '.join(rng.choices(WORDS, k=30))}</think><answer>{json.dumps(preds)}</answer>")
        ctxs.append(SampleContext(id=str(i), prompt="Find every object.", solution=gt, image_sizes=[SIZE],
                                  input_sizes=[SIZE], metadata={"num_instances": objects}))
    return comps, ctxs


def reasoning_batch(n: int, rng: random.Random) -> tuple[list[str], list[SampleContext]]:
    comps, ctxs = [], []
    image = Image.new("RGB", (56, 56), (200, 100, 50))
    for i in range(n):
        answer = rng.randint(0, 20)
        said = answer if rng.random() < 0.5 else answer + 1
        comps.append(f"<think>{' '.join(rng.choices(WORDS, k=200))}</think><answer>{said}</answer>")
        ctxs.append(SampleContext(id=str(i), prompt="How many shapes are there?", solution=f"<answer> {answer} </answer>",
                                  images=[image], image_sizes=[image.size], input_sizes=[image.size],
                                  completion_length=rng.randint(100, 400)))
    return comps, ctxs


def time_reward(reward: Reward, comps: list[str], ctxs: list[SampleContext], repeats: int) -> float:
    """Median completions per second of ``repeats`` calls (after one warm-up call)."""
    reward(comps[:8], ctxs[:8])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        values = reward(comps, ctxs)
        times.append(time.perf_counter() - t0)
        assert len(values) == len(comps)
    return len(comps) / statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-models", action="store_true", help="leave out the two judge rewards")
    args = p.parse_args(argv)
    rng = random.Random(0)
    rec, det, reason = rec_batch(args.n, rng), detection_batch(args.n, rng), reasoning_batch(args.n, rng)
    schedule = ThresholdSchedule(stages=[{"from_step": 0, "match_iou": 0.5, "zero_below": 0.5, "one_above": 0.75}])
    cases: list[tuple[str, Reward, tuple]] = [
        ("IoUReward", IoUReward(), rec),
        ("IoUReward(threshold=0.5)", IoUReward(threshold=0.5), rec),
        ("RecJsonFormat", RecJsonFormat(), rec),
        ("ThinkAnswerFormat", ThinkAnswerFormat(), reason),
        ("DetectionMAP(map)", DetectionMAP(box_frame="original_pixels"), det),
        ("DetectionMAP(map_50)", DetectionMAP(metric="map_50", box_frame="original_pixels"), det),
        ("ODLength", ODLength(box_frame="original_pixels"), det),
        ("DetectionWeightedSum", DetectionWeightedSum(box_frame="original_pixels"), det),
        ("DualFormat", DualFormat(box_frame="original_pixels"), det),
        ("LocalizationPrecision", LocalizationPrecision(schedule=schedule, box_frame="original_pixels"), det),
        ("LocalizationRecall", LocalizationRecall(schedule=schedule, box_frame="original_pixels"), det),
        ("Accuracy(numeric)", Accuracy(mode="numeric"), reason),
        ("Accuracy(exact)", Accuracy(mode="exact"), reason),
        ("HFRRF(numeric)", HFRRF(mode="numeric"), reason),
        ("CosineLength", CosineLength(mode="numeric", max_len=512), reason),
        ("RepetitionPenalty(words)", RepetitionPenalty(), reason),
        ("RepetitionPenalty(JSON items)", RepetitionPenalty(), det),
    ]
    with contextlib.ExitStack() as stack:
        if not args.skip_models:
            from lit_vr1.rewards.reward_model import JudgeScorer, RemoteRewardModel, RewardModelReward
            from lit_vr1.rewards.serve import launch

            scorer = JudgeScorer("tiny:qwen2_5_vl")
            url = stack.enter_context(launch("tiny:qwen2_5_vl")).url
            cases += [
                ("RewardModelReward (tiny judge)", RewardModelReward(scorer=scorer), reason),
                ("RemoteRewardModel (tiny judge, HTTP)", RemoteRewardModel(url=url + "/score"), reason),
                ("RemoteRewardModel (openai protocol)",
                 RemoteRewardModel(url=url + "/v1/chat/completions", protocol="openai"), reason),
            ]
        print(f"{'reward':40s} completions/s (n={args.n}, median of {args.repeats})")
        for name, reward, (comps, ctxs) in cases:
            print(f"{name:40s} {time_reward(reward, comps, ctxs, args.repeats):12.0f}", flush=True)


if __name__ == "__main__":
    main()

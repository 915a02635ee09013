"""The label-free demo's judge (``make demo TASK=label_free``): R1V-Free in miniature.

The policy's GRPO reads no label: its one reward is a judge's p(yes) that the answer is right
(:class:`~lit_vr1.rewards.reward_model.RemoteRewardModel`, served by
``python -m lit_vr1.rewards.serve``). The judge is a tiny VLM SFT'd on labelled pairs of a
disjoint split (``configs/judge_label_free.yaml``, synthetic task "judge"): it numbers the shapes
in ``<think>``, then says yes or no to the candidate count. This module measures how far the
judge can be trusted, with labels the policy never read:

* its agreement with the labels on its own held-out pairs (one right and one wrong count per
  image, :func:`pair_agreement`);
* its verdicts on a policy's own held-out answers (:func:`verdicts`): how often it agrees with
  the truth, says yes to a wrong count (what GRPO can exploit) or no to a right one.

Held-out accuracy, the best constant answer, the control and the paired gains are the
reasoning demo's (:mod:`lit_vr1.demo_reasoning`).
"""

from __future__ import annotations

import os
import re

from lit_vr1.data.jsonl import JsonlDataset
from lit_vr1.data.prompts import DEFAULT_JUDGE_PROMPT
from lit_vr1.evaluate import AnswerPrediction
from lit_vr1.rewards.boxes import ANSWER_RE
from lit_vr1.rewards.reward_model import JudgeScorer, ScoreItem

_CANDIDATE = re.compile(re.escape(DEFAULT_JUDGE_PROMPT.split("{answer}")[0].split("\n")[-1]) + r"(.*)\n")


def judge_pairs(data_dir: str) -> tuple[list[ScoreItem], list[bool]]:
    """The judge task's held-out pairs (``val.jsonl``) as (items to score, labels): the
    question, the candidate count read back from the judge prompt, the image; True where the
    pair's answer is "yes"."""
    data = JsonlDataset(os.path.join(data_dir, "val.jsonl"), os.path.join(data_dir, "images"), "plain")
    items, labels = [], []
    for i in range(len(data)):
        sample = data[i]
        text = next(c["text"] for c in sample.messages[-1]["content"] if c["type"] == "text")
        found = _CANDIDATE.search(text)
        question = text.split("\n", 1)[0].removeprefix("Question: ")
        if found is None:
            raise ValueError(f"{sample.source}: not a judge pair (no 'Candidate answer:' line in its prompt)")
        items.append(ScoreItem(question, found.group(1), sample.images[0]))
        labels.append(sample.solution.rstrip().endswith("yes"))
    return items, labels


def agreement(scores: list[float], labels: list[bool]) -> dict[str, float]:
    """How often ``score >= 0.5`` says what the label says, overall and per side, and the
    mean score of each side."""
    yes = [s for s, lab in zip(scores, labels) if lab]
    no = [s for s, lab in zip(scores, labels) if not lab]
    n = max(len(scores), 1)
    return {"agreement": sum((s >= 0.5) == lab for s, lab in zip(scores, labels)) / n,
            "yes_right": sum(s >= 0.5 for s in yes) / max(len(yes), 1),
            "no_right": sum(s < 0.5 for s in no) / max(len(no), 1),
            "mean_score_yes": sum(yes) / max(len(yes), 1), "mean_score_no": sum(no) / max(len(no), 1),
            "pairs": len(scores)}


def pair_agreement(scorer: JudgeScorer, data_dir: str) -> dict[str, float]:
    """The judge's agreement with the labels on its held-out pairs (:func:`agreement`)."""
    items, labels = judge_pairs(data_dir)
    return agreement(scorer.score(items), labels)


def verdicts(scorer: JudgeScorer, preds: list[AnswerPrediction]) -> dict[str, float]:
    """The judge on a policy's held-out answers (those with an ``<answer>`` block; the reward
    gives the others 0 without asking): agreement with the truth, the share of wrong answers
    it says yes to (false_yes) and of right answers it says no to (false_no)."""
    shown = [p for p in preds if ANSWER_RE.search(p.completion)]
    if not shown:
        return {"agreement": float("nan"), "false_yes": float("nan"), "false_no": float("nan"), "answers": 0}
    items = [ScoreItem(p.sample.messages[-1]["content"][-1]["text"], p.answer.strip(), p.sample.images[0])
             for p in shown]
    right = [p.answer_ok for p in shown]
    stats = agreement(scorer.score(items), right)
    return {"agreement": stats["agreement"], "false_yes": 1 - stats["no_right"] if not all(right) else 0.0,
            "false_no": 1 - stats["yes_right"] if any(right) else 0.0, "answers": len(shown)}


def print_judge(split: dict) -> None:
    j = split["judge"]
    pairs = j["pairs"]
    print(f"judge: agrees with the labels on {pairs['agreement']:.3f} of its {pairs['pairs']} held-out pairs "
          f"(right counts judged yes {pairs['yes_right']:.3f}, wrong counts judged no {pairs['no_right']:.3f})")
    for name, v in j["on_answers"].items():
        print(f"judge on the {name} model's held-out answers: agrees with the truth on {v['agreement']:.3f}; "
              f"says yes to {v['false_yes']:.3f} of the wrong ones, no to {v['false_no']:.3f} of the right ones")

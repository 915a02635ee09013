"""``trainer.val_check_interval`` counts optimiser steps in a GRPO fit (lit_vr1/val_schedule.py)."""

from __future__ import annotations

import csv

from lit_vr1.val_schedule import crossed_multiple
from tests.test_new_user import lit_vr1, small


def validated_steps(root) -> list[int]:
    rows = [r for path in sorted(root.glob("logs/version_*/metrics.csv")) for r in csv.DictReader(open(path))]
    return sorted({int(r["step"]) for r in rows if r.get("val/miou")})


def test_a_multiple_stepped_over_inside_a_rollout_counts():
    assert [crossed_multiple(b, b + 2, 3) for b in (0, 2, 4)] == [False, True, True]  # steps 2, 4, 6
    assert [crossed_multiple(b, b + 1, 3) for b in range(6)] == [False, False, True, False, False, True]


def test_validation_every_n_steps_with_several_steps_a_rollout(tmp_path):
    """4 completions a rollout in mini-batches of 2: 2 optimiser steps a rollout. With an interval
    of 3 Lightning counted rollouts and validated at step 6 alone; now at the first rollout end at
    or after steps 3 and 6. With 4 steps a rollout (2 iterations) and 6 steps it never validated."""
    run = small(tmp_path / "two", tmp_path / "data", "--trainer.max_steps=6", "--trainer.val_check_interval=3",
                "--model.init_args.grpo.mini_batch_size=2", "--trainer.num_sanity_val_steps=0")
    proc = lit_vr1(tmp_path, "fit", *run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert validated_steps(tmp_path / "two") == [4, 6]
    run = small(tmp_path / "four", tmp_path / "data", "--trainer.max_steps=6", "--trainer.val_check_interval=3",
                "--model.init_args.grpo.mini_batch_size=2", "--model.init_args.grpo.num_iterations=2",
                "--trainer.num_sanity_val_steps=0")
    proc = lit_vr1(tmp_path, "fit", *run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert validated_steps(tmp_path / "four") == [4, 6]  # the second rollout is cut at max_steps 6 (warned of)
    assert "trainer.max_steps=6 ends inside a rollout (each takes 4 optimiser steps)" in proc.stderr


def test_a_resumed_fit_validates_at_the_steps_an_uninterrupted_one_does(tmp_path):
    """Fit to step 2, resume to 6 (2 steps a rollout, interval 3): the rollout from step 2 to 4
    steps over 3 (Lightning's rule judged the first resumed rollout by batches and skipped it)."""
    common = ("--trainer.val_check_interval=3", "--model.init_args.grpo.mini_batch_size=2",
              "--trainer.num_sanity_val_steps=0")
    first = lit_vr1(tmp_path, "fit", *small(tmp_path / "run", tmp_path / "data", "--trainer.max_steps=2", *common))
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = lit_vr1(tmp_path, "fit", *small(tmp_path / "run", tmp_path / "data", "--trainer.max_steps=6", *common,
                                              "--ckpt_path=last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert validated_steps(tmp_path / "run") == [4, 6]

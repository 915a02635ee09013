"""A list of classes given again (a later config file, a flag) replaces the earlier list whole:
jsonargparse merged equal-length lists entry by entry, and an entry of another class kept the
earlier entry's arguments its class also takes (a user's RolloutLog took the recipe's
RolloutTable's every_n_steps: 25)."""

from __future__ import annotations

import yaml

from lit_vr1.config_lists import class_lists, replace_lists_whole
from tests.test_new_user import ROOT, lit_vr1

RECIPE = ["--config", str(ROOT / "configs/grpo_rec_qwen25vl_3b.yaml"),
          "--config", str(ROOT / "configs/tiny/grpo_rec_qwen25vl_3b.yaml")]
MINE = {"trainer": {"callbacks": [{"class_path": "callbacks.ColdStart", "init_args": {"steps": 5}},
                                  {"class_path": "callbacks.RolloutLog"}]},
        "model": {"init_args": {"rewards": [{"class_path": "lit_vr1.rewards.RecJsonFormat"},
                                            {"class_path": "lit_vr1.rewards.IoUReward"}]}}}


def test_the_lists_of_classes_of_a_file_are_found_and_reset_before_a_later_file_or_flag(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(MINE))
    assert class_lists(MINE) == ["trainer.callbacks", "model.init_args.rewards"]
    assert replace_lists_whole([*RECIPE, "--config", str(mine)]) == [  # the file's order (safe_dump sorts its keys)
        *RECIPE, "--model.init_args.rewards=null", "--trainer.callbacks=null", "--config", str(mine)]
    flag = "--trainer.callbacks=[{class_path: callbacks.RolloutLog}]"
    assert replace_lists_whole([*RECIPE, flag]) == [*RECIPE, "--trainer.callbacks=null", flag]
    alone = ["--config", str(mine), "--trainer.max_steps=3", "--trainer.callbacks+=callbacks.RolloutLog"]
    assert replace_lists_whole(alone) == alone  # nothing earlier to replace; an append is an append


def test_a_users_callbacks_take_nothing_of_the_recipes(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(MINE))
    proc = lit_vr1(tmp_path, "fit", *RECIPE, "--config", str(mine), "--print_config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = yaml.safe_load(proc.stdout)
    log = config["trainer"]["callbacks"][1]
    assert log["class_path"] == "callbacks.RolloutLog" and log["init_args"]["every_n_steps"] == 1  # not the table's 25
    rewards = config["model"]["init_args"]["rewards"]
    assert [r["class_path"] for r in rewards] == ["lit_vr1.rewards.RecJsonFormat", "lit_vr1.rewards.IoUReward"]
    assert rewards[0]["init_args"]["require_think"] is False  # the recipe's second reward's true stays its own

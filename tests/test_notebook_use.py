"""What a notebook user meets from Python, one kernel and several fits: data modules that do not
draw over each other, notices and warnings that come back, clear errors for what is not there
yet, and rewards routed to no row refused before any step."""

import warnings

import pytest
from helpers import LengthReward
from lightning.pytorch import Trainer

from lit_vr1.config import GRPOConfig
from lit_vr1.data.datamodule import GroundingDataModule
from lit_vr1.data.synthetic import SyntheticSpec
from lit_vr1.evaluate import evaluate
from lit_vr1.grpo import GRPOModule
from lit_vr1.quiet import NOTICES
from lit_vr1.rewards import FunctionReward, IoUReward


def trainer(tmp_path, steps: int = 1) -> Trainer:
    return Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


def module(rewards) -> GRPOModule:
    return GRPOModule(model="tiny:qwen2_5_vl", rewards=rewards, min_pixels=3136, max_pixels=3136,
                      grpo=GRPOConfig(num_generations=2, max_completion_length=4, beta=0.0))


def data(tmp_path, **kw) -> GroundingDataModule:
    spec = dict(num_samples=4, canvas=56, max_shapes=1)
    spec.update(kw.pop("spec", {}))
    return GroundingDataModule(synthetic=SyntheticSpec(**spec), template="plain", batch_size=2,
                               num_val_samples=kw.pop("num_val_samples", 0), **kw)


def test_two_data_modules_with_other_specs_keep_their_own_images(tmp_path, monkeypatch):
    """The default folder is the spec's own: before, both drew into data/synthetic and the first
    module read the second's images with its own boxes, without a word."""
    monkeypatch.chdir(tmp_path)
    a = data(tmp_path, num_val_samples=4)
    a.setup("fit")
    b = data(tmp_path, num_val_samples=4, spec={"canvas": 112, "seed": 3})
    b.setup("fit")
    assert a.synthetic_dir != b.synthetic_dir and a.synthetic_dir.startswith("data/synthetic/rec-56px-")
    assert {s.images[0].size for s in a.held_out()} == {(56, 56)}
    assert {s.images[0].size for s in b.held_out()} == {(112, 112)}
    assert data(tmp_path, num_val_samples=4).synthetic_dir == a.synthetic_dir  # the same spec reuses its folder


def test_a_shared_folder_redrawn_by_another_module_is_refused(tmp_path):
    shared = str(tmp_path / "shared")
    a = data(tmp_path, num_val_samples=4, synthetic_dir=shared)
    a.setup("fit")
    b = data(tmp_path, num_val_samples=4, synthetic_dir=shared, spec={"canvas": 112, "seed": 3})
    b.setup("fit")
    assert {s.images[0].size for s in b.held_out()} == {(112, 112)}
    with pytest.raises(ValueError, match=r"shared: its (train|val) split was drawn again with another spec"):
        a.held_out()
    with pytest.raises(ValueError, match="drawn again"):
        a.train_dataloader()


def test_a_spec_changed_after_setup_is_not_taken_for_a_redraw(tmp_path, monkeypatch):
    """The folder checked is the one the rows were read from, not the one the changed spec names."""
    monkeypatch.chdir(tmp_path)
    a = data(tmp_path, num_val_samples=4)
    a.setup("fit")
    a.synthetic.canvas = 112  # a notebook edits the spec after setup
    assert {s.images[0].size for s in a.held_out()} == {(56, 56)}


def test_held_out_without_held_out_data_says_why(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"num_val_samples=0 .*give num_val_samples > 0"):
        data(tmp_path).held_out()
    with pytest.raises(ValueError, match=r"call data.setup\('fit'\) first"):
        data(tmp_path, num_val_samples=4).held_out()
    with pytest.raises(ValueError, match="no samples to score"):
        evaluate(None, None, [])


def test_export_before_the_model_is_built_says_so(tmp_path):
    with pytest.raises(ValueError, match="has no model yet"):
        module([LengthReward()]).export(str(tmp_path / "out"))


def test_rewards_routed_to_no_training_row_are_refused_before_any_step(tmp_path, monkeypatch):
    """The synthetic rows' task is "default": IoUReward(tasks=["rec"]) scored none of them, every
    step was skipped and the fit died ten steps later in a FloatingPointError."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"no reward scores any training row: the rows' tasks are 'default' \(4 rows\), "
                                         r"and the rewards score 'iou' \(tasks \['rec'\]\)"):
        trainer(tmp_path).fit(module([IoUReward(tasks=["rec"])]), data(tmp_path))
    with pytest.warns(UserWarning, match=r"reward 'iou' \(tasks \['math'\]\) scores none of the training rows"):
        trainer(tmp_path).fit(module([LengthReward(), IoUReward(tasks=["math"])]), data(tmp_path))


def test_a_fit_that_raises_takes_its_notice_filters_out(tmp_path, monkeypatch):
    """Lightning skips teardown when a fit raises (or a notebook's stop button interrupts it): the
    notices it silenced stayed silenced for the rest of the kernel."""
    monkeypatch.chdir(tmp_path)

    def boom(completions, **kwargs):
        raise RuntimeError("a bug in my reward")

    def ours():
        return [f for f in warnings.filters if f[0] == "ignore" and f[1] is not None and f[1].pattern in NOTICES]

    before = ours()
    with pytest.raises(Exception, match="a bug in my reward"):
        trainer(tmp_path).fit(module([boom]), data(tmp_path))
    assert ours() == before


def test_a_reward_reused_in_a_second_fit_warns_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def flaky(completions, **kwargs):
        raise ValueError("a service it calls is down")

    reward = FunctionReward(fn=flaky, on_error="nan")
    for _ in range(2):  # before, the second fit said nothing of its failures
        with pytest.warns(UserWarning, match=r"reward 'flaky' raised"):
            trainer(tmp_path).fit(module([LengthReward(), reward]), data(tmp_path))


def test_settings_and_rewards_changed_between_fits_reach_the_next_fit(tmp_path, monkeypatch):
    # a notebook's next cell: another GRPOConfig assigned whole, a plain function put in the list
    # (before: the loop kept the old config, the checkpoint recorded it, and the function failed
    # mid-step with an AttributeError), and beta raised from 0 (before: a RuntimeError at the
    # first step, saying "beta is 0")
    monkeypatch.chdir(tmp_path)
    m = module([LengthReward()])
    trainer(tmp_path).fit(m, data(tmp_path))
    assert len(m.loop.last_rollout.completions) == 4 and m.ref_model is None  # 2 prompts x G=2, beta 0

    def short(completions, **kwargs):
        return [1.0 / (1 + len(c)) for c in completions]

    m.config = GRPOConfig(num_generations=3, max_completion_length=4, beta=0.04)
    m.rewards = [LengthReward(), short]
    with pytest.warns(UserWarning, match=r"built with beta 0: its reference model is a frozen copy of the policy"):
        trainer(tmp_path).fit(m, data(tmp_path))
    assert len(m.loop.last_rollout.completions) == 6 and m.loop.config is m.config
    assert m.hparams["grpo"].num_generations == 3 and m.ref_model is not None
    assert [r.name for r in m.rewards] == ["length", "short"] and "reward/short/mean" in m.last_metrics
    def shorter(completions, **kwargs):
        return [0.5 / (1 + len(c)) for c in completions]

    m.rewards.append(shorter)  # appended in place: wrapped when the next fit starts
    m.config.beta = 0.0
    trainer(tmp_path).fit(m, data(tmp_path))
    assert type(m.rewards[2]).__name__ == "FunctionReward"
    # a validation after beta was raised builds no reference (only a fit reads one)
    fresh = module([LengthReward()])
    trainer(tmp_path).fit(fresh, data(tmp_path))  # built with beta 0
    fresh.config.beta = 0.04
    trainer(tmp_path).validate(fresh, data(tmp_path, num_val_samples=2))
    assert fresh.ref_model is None
    # a module pickled before config and rewards were properties (they were plain attributes)
    state = dict(m.__dict__)
    state["config"], state["rewards"] = state.pop("_config"), state.pop("_rewards")
    old = GRPOModule.__new__(GRPOModule)
    old.__setstate__(state)
    assert old.config is m.config and old.rewards is m.rewards
    with pytest.raises(TypeError, match=r"model.rewards\[0\]: 3 \(int\) is not a reward"):
        m.rewards = [3]
    with pytest.raises(TypeError, match="grpo: expected a GRPOConfig"):
        m.config = 3


def test_settings_of_the_wrong_type_name_their_field():
    from lit_vr1.rules import ConfigError

    with pytest.raises(ConfigError, match=r"GRPOConfig.temperature='hot' must be a number, not str"):
        GRPOConfig(temperature="hot")  # before: "'>' not supported between instances of 'str' and 'int'"
    with pytest.raises(ConfigError, match=r"(?s)2 problem.*epsilon_high='x' must be a number or null.*"
                                          r"num_generations=True must be an integer"):
        GRPOConfig(epsilon_high="x", num_generations=True)
    import numpy as np

    assert GRPOConfig(num_generations=np.int64(4), temperature=1).num_generations == 4  # numbers as numbers


def test_evaluate_reads_boxes_in_the_models_own_frame_and_warns_of_boxes_past_the_image(tmp_path, monkeypatch):
    # Qwen2-VL writes boxes on a 0-1000 grid: evaluate() without box_frame read them as input pixels
    # (every box far past a 56 px image, every IoU 0) without a word
    from lit_vr1.evaluate import predict_rec

    monkeypatch.chdir(tmp_path)
    held = data(tmp_path, num_val_samples=4)
    held.setup("fit")
    samples = list(held.held_out())
    m = GRPOModule(model="tiny:qwen2_vl", min_pixels=3136, max_pixels=3136, grpo=GRPOConfig(beta=0.0))
    m.configure_model()
    assert m.box_frame == "norm1000"
    text = '{"bbox_2d": [100, 100, 900, 900], "label": "x"}'
    monkeypatch.setattr("lit_vr1.evaluate.greedy_rollout", lambda *a, **k: _rollout_of(text, samples))
    own = predict_rec(m.policy, m.processor, samples)
    assert all(p.box is not None and p.box[2] <= 56 for p in own)
    with pytest.warns(UserWarning, match=r"evaluate\(\): 4 of 4 boxes reach past their image once read in box_frame "
                                         r"input_pixels .*box_frame=module.box_frame"):
        evaluate(m.policy, m.processor, samples, box_frame="input_pixels")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate(m.policy, m.processor, samples)
    rows = result.records()
    assert len(rows) == 4 and set(rows[0]) == {"id", "source", "completion", "box", "iou", "format_ok", "truncated",
                                               "solution"}
    import json

    json.dumps(rows)  # plain values: a DataFrame's rows, or JSON


def _rollout_of(text, samples):
    """A greedy rollout stand-in: every answer ``text``, contexts as the real one builds them."""
    import torch

    from lit_vr1.rewards.base import SampleContext

    contexts = [SampleContext(id=s.id, prompt=s.question, solution=s.solution, image_sizes=s.image_sizes,
                              input_sizes=s.image_sizes, source=s.source) for s in samples]
    return type("Rollout", (), {"completions": [text] * len(samples), "contexts": contexts,
                                "truncated": torch.zeros(len(samples), dtype=torch.bool)})()

import glob
import json
import os
import time

import pytest
from helpers import LengthReward, MemoryLogger
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from callbacks import RolloutTable
from lit_vr1.config import GRPOConfig
from lit_vr1.data.datamodule import collate
from lit_vr1.grpo import GRPOModule


def test_rollout_table_writes_control_characters_as_escapes():
    """A completion holding ESC [2J cleared the console and put raw bytes in a redirected log (helper-89)."""
    from callbacks.rollout_table import printable

    assert printable("a\x1b[2Jb\x07 é 中\n\tc") == "a\\x1b[2Jb\\x07 é 中\n\tc"


def test_rollout_table_prints_and_logs_to_tensorboard(samples, tmp_path, capsys):
    seed_everything(0)
    module = GRPOModule(rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2, max_completion_length=8, beta=0.0))
    table = RolloutTable(every_n_steps=1, num_samples=3)
    logger = TensorBoardLogger(tmp_path)
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=logger, callbacks=[table], enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(samples[:4], batch_size=2, collate_fn=collate))
    out = capsys.readouterr().out
    assert "rollouts at step 1" in out and "rollouts at step 2" in out and "length" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(glob.glob(str(tmp_path / "lightning_logs" / "version_0"))[0], size_guidance={"tensors": 0})
    acc.Reload()
    assert "rollouts/text_summary" in acc.Tags()["tensors"]
    texts = acc.Tensors("rollouts/text_summary")
    assert [t.step for t in texts] == [1, 2]
    first = texts[0].tensor_proto.string_val[0].decode()
    assert "| id | completion | length | total | advantage |" in first
    assert first.count("\n") == 1 + 3  # header, separator line, three rows


def test_rollout_log_writes_every_completion_with_its_rewards(samples, tmp_path):
    import json
    import math

    from callbacks import RolloutLog
    from lit_vr1.rewards import Reward

    class OnlyFirst(Reward):
        """Applies to the first completion of each rollout only (NaN elsewhere)."""

        default_name = "first"

        def score(self, completions, contexts):
            return [1.0] + [math.nan] * (len(completions) - 1)

    seed_everything(0)
    module = GRPOModule(rewards=[LengthReward(), OnlyFirst()],
                        grpo=GRPOConfig(num_generations=2, max_completion_length=8, beta=0.0))
    path = tmp_path / "debug" / "rollouts.jsonl"
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, callbacks=[RolloutLog(str(path))],
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(samples[:4], batch_size=2, collate_fn=collate))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2 * 2 * 2  # 2 steps x 2 prompts x G=2
    assert [r["step"] for r in lines] == [1] * 4 + [2] * 4
    last = lines[4:]
    rollout, scores = module.loop.last_rollout, module.loop.last_scores
    assert [r["completion"] for r in last] == rollout.completions
    assert [r["id"] for r in last] == [c.id for c in rollout.contexts]
    assert all(abs(r["rewards"]["length"] - len(c) / 100.0) < 1e-6 for r, c in zip(last, rollout.completions))
    assert [r["rewards"]["first"] for r in last] == [1.0, None, None, None]  # NaN is written as null
    assert [r["total"] for r in last] == scores.total.tolist()
    assert [r["advantage"] for r in last] == rollout.advantages.tolist()
    assert {"prompt", "solution", "task", "source", "completion_length", "truncated"} <= set(last[0])


def test_loggers_tensorboard_csv_and_wandb_offline_all_receive_the_metrics(samples, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    seed_everything(0)
    module = GRPOModule(rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2, max_completion_length=8, beta=0.0))
    loggers = [TensorBoardLogger(tmp_path / "tb"), CSVLogger(tmp_path / "csv"),
               WandbLogger(save_dir=str(tmp_path / "wb"), offline=True, project="lit-vr1-test")]
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=loggers, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(samples[:4], batch_size=2, collate_fn=collate))
    import wandb

    wandb.finish()
    assert glob.glob(str(tmp_path / "tb" / "lightning_logs" / "version_0" / "events.out.tfevents.*"))
    csv_rows = open(glob.glob(str(tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv"))[0]).read()
    assert "train/reward/length/mean" in csv_rows and "train/loss" in csv_rows
    runs = glob.glob(str(tmp_path / "wb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert runs
    # wandb's service process writes the run file; on a busy machine it may still be flushing after finish()
    deadline = time.monotonic() + 60
    while b"train/reward/length/mean" not in open(runs[0], "rb").read() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert b"train/reward/length/mean" in open(runs[0], "rb").read()


def test_predict_through_the_cli_writes_jsonl_and_pngs_for_three_images(tmp_path):
    """`lit-vr1 predict`: JSONL of prompts and images in, JSONL of outputs and parsed boxes out, plus PNGs."""
    import json
    import os
    import subprocess
    import sys

    from lit_vr1.data.synthetic import SyntheticSpec, write_synthetic
    from tests.test_cli import ROOT

    src = write_synthetic(tmp_path / "prompts", SyntheticSpec(num_samples=3, canvas=56, task="label_free"))
    out = tmp_path / "pred"
    cmd = [sys.executable, "-m", "lit_vr1.cli", "predict", "--config", str(ROOT / "configs/quickstart.yaml"),
           f"--data.init_args.predict_files={src}", f"--data.init_args.predict_images={tmp_path / 'prompts' / 'images'}",
           "--model.init_args.eval_max_new_tokens=12", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
           "--trainer.callbacks=[{class_path: callbacks.PredictionWriter, init_args: {output_dir: " + str(out) + ", scale: 2}}]"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == ["train-0", "train-1", "train-2"]
    assert all(isinstance(r["completion"], str) and isinstance(r["boxes"], list) for r in lines)
    assert all(r["image_sizes"] == [[56, 56]] for r in lines)
    rows = [json.loads(line) for line in open(src)]  # each prediction names the row's image files
    assert [r["images"] for r in lines] == [[str(tmp_path / "prompts" / "images" / row["image"])] for row in rows]
    pngs = sorted(p.name for p in (out / "images").iterdir())
    assert pngs == ["train-0.png", "train-1.png", "train-2.png"]
    from PIL import Image

    assert Image.open(out / "images" / "train-0.png").size == (112, 112)  # scale 2
    assert f"PredictionWriter: answers in {out / 'predictions.jsonl'}" in proc.stdout + proc.stderr
    # what wrote them (helper-86: a prediction folder named nothing of it)
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "predict" and run["model"] == "tiny:qwen2_5_vl" and run["checkpoint"] is None
    assert run["versions"]["torch"] == __import__("torch").__version__ and "lit-vr1" in run["versions"]
    # without a writer among the callbacks, one writes under the run's root instead of nothing at all
    root = tmp_path / "run"
    plain = [*cmd[:-1], "--trainer.callbacks=[]", f"--trainer.default_root_dir={root}"]
    proc = subprocess.run(plain, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((root / "predictions" / "predictions.jsonl").read_text().splitlines()) == 3
    # with the config's CSV logger, into a training run's root: no empty logs/version_N among the run's logs
    (root / "logs" / "version_0").mkdir(parents=True)
    (root / "logs" / "version_0" / "metrics.csv").write_text("step,train/loss\n1,0.5\n")
    logged = [a for a in plain if a != "--trainer.logger=false"]
    proc = subprocess.run(logged, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (root / "logs").iterdir()) == ["version_0"]


def test_prediction_writer_draws_the_parsed_boxes(tmp_path, samples):
    from PIL import Image

    from callbacks import PredictionWriter

    class FakeTrainer:
        world_size, global_rank = 1, 0

    writer = PredictionWriter(str(tmp_path), scale=1)
    writer.on_predict_start(FakeTrainer(), None)
    sample = samples[0]
    rec = {"id": "a/b", "boxes": [{"bbox_2d": [10, 10, 30, 30], "label": ""}]}
    writer.write_on_batch_end(FakeTrainer(), None, [rec], None, [sample], 0, 0)
    im = Image.open(tmp_path / "images" / "a_b.png").convert("RGB")
    assert im.getpixel((10, 20)) == (220, 0, 0) and im.getpixel((20, 10)) == (220, 0, 0)  # the box's edges are red
    assert im.getpixel((20, 20)) != (220, 0, 0)
    assert '"id": "a/b"' in (tmp_path / "predictions.jsonl").read_text()
    # the line's ground truth in green; an answer without a box is captioned
    from lit_vr1.rewards.boxes import first_box

    x1, y1, x2, y2 = (int(v) for v in first_box(sample.solution))
    assert im.getpixel((x1, (y1 + y2) // 2)) == (0, 170, 0)
    writer.write_on_batch_end(FakeTrainer(), None, [{"id": "none", "boxes": []}], None, [sample], 0, 0)
    w, h = sample.images[0].size
    plain = Image.open(tmp_path / "images" / "a_b.png").convert("RGB").crop((0, h - 14, w, h))
    captioned = Image.open(tmp_path / "images" / "none.png").convert("RGB").crop((0, h - 14, w, h))
    assert list(captioned.getdata()) != list(plain.getdata())  # the caption's text along the bottom
    # a box written past the picture's edge is drawn at the edge, and kept as written in the JSONL
    past = {"id": "past", "boxes": [{"bbox_2d": [10, h - 5, 30, h + 40], "label": ""}]}
    writer.write_on_batch_end(FakeTrainer(), None, [past], None, [sample], 0, 0)
    edge = Image.open(tmp_path / "images" / "past.png").convert("RGB")
    assert edge.getpixel((20, h - 1)) == (220, 0, 0)
    assert f'"bbox_2d": [10, {h - 5}, 30, {h + 40}]' in (tmp_path / "predictions.jsonl").read_text()
    # a second row with an id drawn already gets its own picture (it replaced the first before)
    writer.write_on_batch_end(FakeTrainer(), None, [{**rec, "id": "a/b"}, {**rec, "id": "a_b"}], None, [sample] * 2, 0, 0)
    assert sorted(p.name for p in (tmp_path / "images").glob("a_b*.png")) == ["a_b-2.png", "a_b-3.png", "a_b.png"]
    # ids of other scripts keep their letters, an id of dots alone is "row" (its "...png" stopped the prediction),
    # and every line names its picture (helper-81)
    writer.write_on_batch_end(FakeTrainer(), None, [{**rec, "id": i} for i in ("中文-1", "中文-2", "..", "é/1")], None,
                              [sample] * 4, 0, 0)
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [x["picture"] for x in lines[-4:]] == ["images/中文-1.png", "images/中文-2.png", "images/row.png", "images/é_1.png"]
    assert all((tmp_path / x["picture"]).is_file() for x in lines)
    # a long id of another script is cut by bytes, under the file systems' 255 (90 x 中 is 270 bytes; helper-83)
    writer.write_on_batch_end(FakeTrainer(), None, [{**rec, "id": "中" * 90}], None, [sample], 0, 0)
    name = json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[-1])["picture"]
    assert (tmp_path / name).is_file() and len(os.path.basename(name).encode()) <= 204

    class SecondProcess:
        world_size, global_rank = 2, 1

    other = PredictionWriter(str(tmp_path / "shared"), scale=1)  # processes share the folder: the second's names differ
    other.on_predict_start(SecondProcess(), None)
    other.write_on_batch_end(SecondProcess(), None, [{**rec, "id": "a/b"}], None, [sample], 0, 0)
    assert sorted(p.name for p in (tmp_path / "shared" / "images").iterdir()) == ["a_b.rank1.png"]


def test_ptst_switches_stage_at_the_configured_steps_and_survives_a_resume(samples, tmp_path):
    from lightning.pytorch import Callback
    from lightning.pytorch.callbacks import ModelCheckpoint

    from callbacks import PTST

    class Probe(Callback):
        def __init__(self):
            self.seen = []  # (step before the batch, completions per prompt, completion token budget)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            r = pl_module.loop.last_rollout
            self.seen.append((trainer.global_step - 1, len(r) // len(batch), pl_module.loop.sampling.max_completion_length,
                              r.completion_ids.shape[1]))

    stages = [{"max_completion_length": 4, "num_generations": 2, "steps": 2},
              {"max_completion_length": 9, "num_generations": 3, "steps": 5}]

    def run(max_steps, ckpt_path=None):
        seed_everything(0)
        module = GRPOModule(rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2, max_completion_length=4, beta=0.0))
        probe = Probe()
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1)
        trainer = Trainer(accelerator="cpu", max_steps=max_steps, logger=False, callbacks=[PTST(stages), probe, ckpt],
                          enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, DataLoader(samples[:8], batch_size=2, collate_fn=collate), ckpt_path=ckpt_path)
        return probe.seen

    seen = run(3)
    assert [(s, g, m) for s, g, m, _ in seen] == [(0, 2, 4), (1, 2, 4), (2, 3, 9)]
    assert all(width <= m for _, _, m, width in seen)
    resumed = run(4, ckpt_path=str(tmp_path / "ckpt" / "step=2.ckpt"))  # killed after 2 steps, resumed
    assert [(s, g, m) for s, g, m, _ in resumed] == [(2, 3, 9), (3, 3, 9)]
    with pytest.raises(ValueError, match="PTST stage 1: need .*num_generations >= 2"):
        PTST([{"max_completion_length": 4, "num_generations": 2, "steps": 1},
              {"max_completion_length": 4, "num_generations": 1, "steps": 1}])


def test_ptst_logs_its_stage_at_the_updates_step_warns_of_stages_never_reached_and_checks_its_fields(samples):
    """A reasoning user (helper-52): ptst/stage rows were one step behind the train/... rows (a
    plot showed the switch a step early); max_steps ending before a stage dropped it without a
    word; a misspelt or ill-typed stage field was a raw TypeError."""
    from callbacks import PTST
    from lit_vr1.rules import UnknownFieldError

    stages = [{"max_completion_length": 4, "num_generations": 2, "steps": 2},
              {"max_completion_length": 6, "num_generations": 2, "steps": 2},
              {"max_completion_length": 8, "num_generations": 2, "steps": 1}]
    seed_everything(0)
    module = GRPOModule(rewards=[LengthReward()], grpo=GRPOConfig(num_generations=2, max_completion_length=4, beta=0.0))
    logger = MemoryLogger()
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=logger, callbacks=[PTST(stages)], enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    with pytest.warns(UserWarning, match=r"callbacks.PTST: trainer.max_steps=3 ends before stage\(s\) 2 start \(at "
                                         r"optimiser step\(s\) 4\): they never run; raise max_steps to at least 5"):
        trainer.fit(module, DataLoader(samples[:8], batch_size=2, collate_fn=collate))
    by_step = {}
    for step, row in logger.rows:
        by_step.setdefault(step, {}).update(row)
    assert [(s, by_step[s]["ptst/stage"], by_step[s]["train/completion/length_max"] <= (4, 4, 6)[s - 1])
            for s in (1, 2, 3)] == [(1, 0.0, True), (2, 0.0, True), (3, 1.0, True)]
    with pytest.raises(UnknownFieldError, match="num_generation: not a PTSTStage field; did you mean num_generations"):
        PTST([{"max_completion_length": 4, "num_generation": 2, "steps": 1}])
    with pytest.raises(ValueError, match=r"PTSTStage.max_completion_length='20' must be"):
        PTST([{"max_completion_length": "20", "num_generations": 2, "steps": 1}])
    with pytest.raises(ValueError, match=r"PTSTStage.steps=None must be"):
        PTST([{"max_completion_length": 20, "num_generations": 2, "steps": None}])


def test_validate_and_test_on_a_seeded_subset_write_results_json(tmp_path):
    import json

    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.data.synthetic import SyntheticSpec
    from lit_vr1.evaluate import evaluate

    def data(seed):
        dm = GroundingDataModule(synthetic=SyntheticSpec(num_samples=4, canvas=56), synthetic_dir=str(tmp_path / "d"),
                                 num_val_samples=10, val_subset=4, subset_seed=seed, batch_size=2)
        dm.setup("fit")
        return dm

    dm = data(1)
    ids = [s.id for s in dm.held_out()]
    assert len(ids) == 4 and ids == [s.id for s in data(1).held_out()] and ids != [s.id for s in data(2).held_out()]
    results = tmp_path / "eval" / "results.json"
    module = GRPOModule(min_pixels=3136, max_pixels=3136, eval_max_new_tokens=16, results_path=str(results))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, dm)
    trainer.test(module, dm)
    runs = json.loads(results.read_text())
    assert [(r["split"], r["n"], r["step"]) for r in runs] == [("val", 4, 0), ("test", 4, 0)]
    # the same numbers as the demo's evaluation of the same 4 samples
    ref = evaluate(module.policy, module.processor, list(dm.held_out()), batch_size=2, max_new_tokens=16,
                   box_frame=module.box_frame)
    for r in runs:
        assert r["acc50"] == pytest.approx(ref.acc50, abs=1e-6) and r["miou"] == pytest.approx(ref.miou, abs=1e-6)
        assert r["format"] == pytest.approx(ref.format, abs=1e-6)


def test_cold_start_stops_at_sigterm_between_its_steps(tmp_path, monkeypatch):
    """Lightning's loop stops at a SIGTERM only between training steps; the cold start runs
    inside on_train_start (minutes on a busy machine) and now checks the signal at each step."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import callbacks.cold_start as cold_start_module
    from callbacks import ColdStart
    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.data.synthetic import SyntheticSpec

    calls = []
    real = cold_start_module.answer_nll

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            trainer._signal_connector.received_sigterm = True  # what Lightning's SIGTERM handler sets
        return real(*args, **kwargs)

    monkeypatch.setattr(cold_start_module, "answer_nll", counted)
    module = GRPOModule(model="tiny:qwen2_5_vl", rewards=[LengthReward()],
                        grpo=GRPOConfig(num_generations=2, max_completion_length=4))
    data = GroundingDataModule(synthetic=SyntheticSpec(num_samples=8, canvas=56, max_shapes=1),
                               synthetic_dir=str(tmp_path), batch_size=2, num_val_samples=0)
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[ColdStart(steps=100, batch_size=2)])
    with pytest.raises(SIGTERMException):
        trainer.fit(module, data)
    assert len(calls) == 3 and trainer.global_step == 0


def test_predictions_give_ids_back_as_the_data_wrote_them(tmp_path, tiny_qwen25):
    """An id written as a number came back as a string ("100"), so joining predictions back to
    the data by id failed."""
    import json

    from PIL import Image

    from lit_vr1.data.jsonl import JsonlDataset
    from lit_vr1.predict import predict_records

    Image.new("RGB", (56, 56), (255, 0, 0)).save(tmp_path / "a.png")
    rows = [{"id": 100, "image": "a.png", "problem": "<image>Where?"},
            {"id": "x7", "image": "a.png", "problem": "Where?", "reward_method": "count"},
            {"image": "a.png", "problem": "Where?"}, {"id": None, "image": "a.png", "problem": "Where?"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = JsonlDataset(str(tmp_path / "p.jsonl"), str(tmp_path))
    model, processor = tiny_qwen25
    out = predict_records(model, processor, [data[i] for i in range(4)], max_new_tokens=2)
    assert [r["id"] for r in out] == [100, "x7", "p-3", "p-4"]  # null: no id
    assert [r["task"] for r in out] == ["default", "count", "default", "default"]  # a mixed file splits by it
    assert all(r["input_sizes"] == [[56, 56]] and r["box_frame"] == "input_pixels" for r in out)
    assert [data[i].id for i in range(4)] == ["100", "x7", "p-3", "p-4"]  # inside, ids stay strings
    # the rollout log gives them back as written too (helper-81: it wrote "100")
    from types import SimpleNamespace

    import torch

    from callbacks.rollout_log import rollout_records
    from lit_vr1.rewards.base import SampleContext

    contexts = [SampleContext.of(data[i], input_sizes=[(56, 56)]) for i in range(4)]
    rollout = SimpleNamespace(contexts=contexts, completions=["x"] * 4, advantages=torch.zeros(4))
    scores = SimpleNamespace(names=["r"], per_reward=torch.zeros(1, 4), total=torch.zeros(4))
    module = SimpleNamespace(loop=SimpleNamespace(last_rollout=rollout, last_scores=scores))
    assert [r["id"] for r in rollout_records(module, step=1, rank=0)] == [100, "x7", "p-3", "p-4"]
    # a reasoning user (helper-52): the answer the rewards read, whether it was cut short, and null
    # (not "") for a row without a solution
    assert all(r["truncated"] is True and r["solution"] is None for r in out)  # 2 tokens: no end of turn
    from lit_vr1.rewards.boxes import answer_text

    assert [r["answer"] for r in out] == [answer_text(r["completion"]).strip() for r in out]


def test_a_cold_start_that_learned_little_is_warned_of():
    """LoRA r=8 on the quickstart's random model: 6.336 -> 4.268 and every group tied for the
    whole run, with nothing said; the whole model: 6.350 -> 0.573, nothing to say."""
    from callbacks.cold_start import little_learned_note

    note = little_learned_note([6.336] + [4.3] * 9 + [4.268])
    assert note.startswith("ColdStart: the answer-token NLL only fell from 6.336 to 4.2") and "more steps" in note
    assert little_learned_note([6.35] + [0.6] * 9 + [0.573]) is None
    assert little_learned_note([6.35]) is None
    assert little_learned_note([0.9] + [0.6] * 10) is None  # a pretrained model that starts low


def test_ptst_stage_boundaries_inside_a_rollout_move_to_its_end():
    """Stages of 3 then 10 steps with 2 steps a rollout ran stage 0 for steps 1-4, with nothing said
    (helper-69); the fit now warns with the steps each stage starts at."""
    from callbacks.ptst import PTSTStage, applied_starts

    stages = [PTSTStage(max_completion_length=16, num_generations=4, steps=3),
              PTSTStage(max_completion_length=32, num_generations=6, steps=10)]
    assert applied_starts(stages, [2, 2]) == [0, 4]
    assert applied_starts(stages, [1, 1]) == [0, 3]
    short = [PTSTStage(max_completion_length=8, num_generations=2, steps=1)] * 2 + stages[1:]
    assert applied_starts(short, [3, 3, 3]) == [0, 3, 3]  # stage 1 passed over: it starts where stage 2 does


def test_a_prediction_that_fails_before_its_first_answer_leaves_no_empty_file(tmp_path):
    from callbacks import PredictionWriter

    class FakeTrainer:
        world_size, global_rank, predicting = 1, 0, True

    writer = PredictionWriter(str(tmp_path))
    writer.on_predict_start(FakeTrainer(), None)
    assert (tmp_path / "predictions.jsonl").is_file()
    writer.on_exception(FakeTrainer(), None, ValueError("a corrupt image"))
    assert not (tmp_path / "predictions.jsonl").exists()
    writer.on_predict_start(FakeTrainer(), None)  # answers written before a failure are kept
    (tmp_path / "predictions.jsonl").write_text('{"id": 1}\n')
    writer.on_exception(FakeTrainer(), None, ValueError("a corrupt image"))
    assert (tmp_path / "predictions.jsonl").read_text() == '{"id": 1}\n'


def test_rollout_table_of_a_mixed_run_shows_the_task_and_leaves_out_rewards_of_other_tasks():
    """Six reward columns, most n/a, squeezed a mixed-task trial's completions to a few characters."""
    from types import SimpleNamespace

    import torch

    from callbacks.rollout_table import rollout_rows
    from lit_vr1.rewards.base import SampleContext

    nan = float("nan")
    class Rollout(list):  # what the table reads of a rollout: its length, contexts, completions, advantages
        pass

    shown = Rollout(["2", "3", "[1, 2, 3, 4]"])
    shown.completions, shown.advantages = list(shown), torch.tensor([0.5, -0.5, 0.0])
    shown.contexts = [SampleContext(id=f"c{i}", prompt="", solution="2", task="count") for i in range(2)] + [
        SampleContext(id="r", prompt="", solution="", task="rec")]
    scores = SimpleNamespace(names=["iou", "accuracy", "format"], total=torch.tensor([2.0, 1.0, 0.3]),
                             per_reward=torch.tensor([[nan, nan, 0.3], [1.0, 0.0, nan], [1.0, 1.0, nan]]))
    module = SimpleNamespace(loop=SimpleNamespace(last_rollout=shown, last_scores=scores))
    header, rows = rollout_rows(module, 2)
    assert header == ["id", "task", "completion", "accuracy", "format", "total", "advantage"]
    assert rows[0] == ["c0", "count", "2", "1.000", "1.000", "2.000", "+0.500"]
    plain = [SampleContext(id=f"d{i}", prompt="", solution="2") for i in range(3)]
    shown.contexts = plain  # one task ('default'): every reward's column, as before
    assert rollout_rows(module, 2)[0] == ["id", "completion", "iou", "accuracy", "format", "total", "advantage"]

"""--model.lora: peft adapters on the language model only; GRPO's reference is the same model
with the adapters disabled (no copy); checkpoints hold the adapters only and restore them
exactly; MergedExport writes a plain checkpoint with the same logits; the CLI parses it."""

import copy
import os
import re

import pytest
import torch
from helpers import LengthReward
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_cli import ROOT, ParseOnly
from torch.utils.data import DataLoader

from callbacks import MergedExport
from lit_vr1.config import GRPOConfig
from lit_vr1.data.datamodule import collate
from lit_vr1.grpo import GRPOModule
from lit_vr1.models.loading import load_model
from lit_vr1.models.lora import LANGUAGE_PROJECTIONS, LoraSpec, apply_lora, lora_layers
from lit_vr1.scoring import logprobs as score
from lit_vr1.sft import SFTModule, teacher_forced

SPEC = LoraSpec(r=4, alpha=8, dropout=0.0)


def make_module(model: str = "tiny:qwen2_5_vl", **kwargs) -> GRPOModule:
    cfg = GRPOConfig(num_generations=4, max_completion_length=8, beta=0.04, gradient_clip_val=None)
    return GRPOModule(model=model, rewards=[LengthReward()], grpo=cfg, seed=0,
                      optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), **kwargs)


def trainer(root, max_steps: int, callbacks=()) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, default_root_dir=root,
                   callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0)


def logprobs(model, processor, samples) -> torch.Tensor:
    """Teacher-forced log-probs of fixed answers (no grad, eval mode)."""
    r = teacher_forced(processor, samples, ['{"bbox_2d": [1, 2, 30, 40]}', "a red circle"])
    was = model.training
    model.eval()
    out = score(model, r, grad=False)
    model.train(was)
    return out * r.completion_mask


def adapters(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def trained(samples, tmp_path_factory):
    """A LoRA GRPO module (beta > 0) before and after 2 steps, with its checkpoint and merged export."""
    root = tmp_path_factory.mktemp("lora")
    seed_everything(0)
    module = make_module(lora=SPEC)
    module.configure_model()
    base = load_model("tiny:qwen2_5_vl", module.processor, seed=0)  # a fresh, independent base model
    before = {"policy": logprobs(module.policy, module.processor, samples[:2]),
              "base": logprobs(base, module.processor, samples[:2])}
    with module.reference_context() as ref:
        before["ref"] = logprobs(ref, module.processor, samples[:2])
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    export = MergedExport(str(root / "merged"))
    loader = DataLoader(samples[:2], batch_size=1, collate_fn=collate)  # 2 steps of 1 prompt x 4
    trainer(root, 2, [ckpt, export]).fit(module, loader)
    return dict(module=module, base=base, before=before, ckpt=str(root / "ckpt" / "last.ckpt"),
                merged=str(root / "merged"), loader=loader, root=root)


# -- targets ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_qwen25", "tiny_qwen2"])
def test_default_targets_are_the_language_models_projections(fixture, request):
    model = copy.deepcopy(request.getfixturevalue(fixture)[0])
    n_layers = model.config.text_config.num_hidden_layers
    peft_model = apply_lora(model, SPEC)
    names = list(lora_layers(peft_model))
    assert len(names) == len(LANGUAGE_PROJECTIONS) * n_layers
    assert all(".language_model." in n and "visual" not in n for n in names)
    assert {n.rsplit(".", 1)[-1] for n in names} == set(LANGUAGE_PROJECTIONS)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(re.search(r"\.lora_[AB]\.", n) for n in trainable)
    # no adapter in the vision tower or merger (Qwen2.5-VL's vision MLP is also named gate/up/down_proj)
    visual = {n: m for n, m in peft_model.named_modules() if ".visual." in n and isinstance(m, torch.nn.Linear)}
    assert visual and all(type(m) is torch.nn.Linear for m in visual.values())
    if fixture == "tiny_qwen25":
        assert any(n.endswith("mlp.gate_proj") for n in visual)


def test_explicit_targets_and_a_misspelt_one(tiny_qwen25):
    model = apply_lora(copy.deepcopy(tiny_qwen25[0]), LoraSpec(r=2, target_modules=["q_proj", "v_proj"]))
    assert {n.rsplit(".", 1)[-1] for n in lora_layers(model)} == {"q_proj", "v_proj"}
    with pytest.raises(ValueError, match=r"model\.lora\.target_modules: 'q_prj' \(close: q_proj") as e:
        apply_lora(copy.deepcopy(tiny_qwen25[0]), LoraSpec(target_modules=["v_proj", "q_prj"]))
    assert "v_proj'" not in str(e.value)  # only the entry that matches nothing is named
    with pytest.raises(ValueError, match="model.lora.target_modules.*linear layers: 0, 1"):
        apply_lora(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), LoraSpec())


def test_sft_with_lora_trains_only_the_adapters(samples):
    module = SFTModule(model="tiny:qwen2_5_vl", lora=SPEC, freeze_vision=True, gradient_checkpointing=True)
    module.configure_model()
    loss, _ = module.sft_loss(samples[:2])
    loss.backward()
    grads = {n: p.grad for n, p in module.policy.named_parameters() if p.grad is not None}
    assert grads.keys() == {n for n, p in module.policy.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in grads)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


# -- the reference: the same model, adapters off ----------------------------------------------
def test_reference_is_the_policy_without_adapters_not_a_copy(trained, samples):
    module, base = trained["module"], trained["base"]
    assert module.ref_model is None
    n_lora = sum(p.numel() for n, p in module.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in base.parameters()) + n_lora
    ptrs = {p.data_ptr() for p in module.parameters()}
    assert len(ptrs) == len(list(base.parameters())) + len(adapters(module))
    # before training: B = 0, so policy == reference == a freshly loaded base model
    b = trained["before"]
    assert b["policy"].abs().sum() > 0
    torch.testing.assert_close(b["ref"], b["base"], rtol=0, atol=1e-6)
    torch.testing.assert_close(b["policy"], b["base"], rtol=0, atol=1e-6)
    # after training: the policy moved, the reference is still the base model
    policy = logprobs(module.policy, module.processor, samples[:2])
    with module.reference_context() as ref:
        assert not torch.is_grad_enabled() and not ref.training
        reference = logprobs(ref, module.processor, samples[:2])
    assert module.policy.training  # the context gives the training mode back
    assert (policy - reference).abs().max() > 1e-3
    torch.testing.assert_close(reference, logprobs(base, module.processor, samples[:2]), rtol=0, atol=1e-6)


def test_rollouts_of_a_lora_policy_use_the_configured_sampling(trained):
    """generate runs on the base model: the rollout's generation config must reach it through
    the peft wrapper (else: the checkpoint's defaults, here greedy and 20 tokens)."""
    rollout = trained["module"].loop.last_rollout
    assert rollout.completion_ids.shape[1] <= 8  # max_completion_length
    assert len(set(rollout.completions)) > 1  # sampled, not 4 copies of the greedy answer
    assert trained["module"].policy.get_base_model().generation_config.do_sample is not True  # put back


def test_without_lora_the_reference_is_a_deep_copy():
    module = make_module()
    module.configure_model()
    assert module.ref_model is not None
    ptrs = {p.data_ptr() for p in module.parameters()}
    assert len(ptrs) == 2 * len(list(module.policy.parameters()))


# -- checkpoints ------------------------------------------------------------------------------
def test_checkpoint_holds_only_the_adapters(trained):
    module = trained["module"]
    state = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)["state_dict"]
    trained_adapters = adapters(module)
    assert state.keys() == trained_adapters.keys() and all("lora_" in k for k in state)
    full_bytes = sum(v.numel() * v.element_size() for v in module.state_dict().values())
    assert os.path.getsize(trained["ckpt"]) < full_bytes / 4
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert all(v.abs().sum() > 0 for v in lora_b)  # trained, not the zero initialisation
    for k, v in state.items():
        assert torch.equal(v, trained_adapters[k])


def test_load_from_checkpoint_restores_the_adapters_exactly(trained, samples):
    module = trained["module"]
    loaded = GRPOModule.load_from_checkpoint(trained["ckpt"], weights_only=True, rewards=[LengthReward()])
    assert loaded.lora == SPEC and loaded.ref_model is None
    got, want = adapters(loaded), adapters(module)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    torch.testing.assert_close(logprobs(loaded.policy, loaded.processor, samples[:2]),
                               logprobs(module.policy, module.processor, samples[:2]), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="size mismatch"):  # strict: a different rank does not load silently
        GRPOModule.load_from_checkpoint(trained["ckpt"], weights_only=False, rewards=[LengthReward()], lora=LoraSpec(r=8))


class AdaptersAtStart(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.step, self.adapters = trainer.global_step, adapters(pl_module)


def test_resume_restores_the_adapters_and_goes_on(trained):
    module = trained["module"]
    resumed, seen = make_module(lora=SPEC), AdaptersAtStart()
    trainer(trained["root"] / "resume", 3, [seen]).fit(resumed, trained["loader"], ckpt_path=trained["ckpt"],
                                                 weights_only=True)  # hparams hold GRPOConfig and LoraSpec
    want = adapters(module)
    assert seen.step == 2 and seen.adapters.keys() == want.keys()
    assert all(torch.equal(seen.adapters[k], want[k]) for k in want)
    assert resumed.global_step == 3 and any(not torch.equal(v, want[k]) for k, v in adapters(resumed).items())


# -- merged export ----------------------------------------------------------------------------
def test_merged_export_loads_as_a_plain_model_with_the_same_logits(trained, samples):
    module = trained["module"]
    merged = load_model(trained["merged"], module.processor)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    got = logprobs(merged, module.processor, samples[:2])
    torch.testing.assert_close(got, logprobs(module.policy, module.processor, samples[:2]), rtol=0, atol=1e-5)
    assert (got - logprobs(trained["base"], module.processor, samples[:2])).abs().max() > 1e-3
    assert os.path.exists(os.path.join(trained["merged"], "tokenizer_config.json"))
    assert lora_layers(module.policy)  # the live policy keeps its adapters


def test_merged_export_without_lora_saves_the_policy(tmp_path, samples):
    module = SFTModule(model="tiny:qwen2_5_vl", seed=3)
    module.configure_model()
    MergedExport(str(tmp_path)).on_fit_end(None, module)
    torch.testing.assert_close(logprobs(load_model(str(tmp_path), module.processor), module.processor, samples[:2]),
                               logprobs(module.policy, module.processor, samples[:2]), rtol=0, atol=1e-6)


# -- CLI --------------------------------------------------------------------------------------
def test_cli_parses_lora_options(monkeypatch):
    monkeypatch.chdir(ROOT)
    args = ["--config", "configs/quickstart.yaml", "--model.init_args.lora.r=8",
            "--model.init_args.lora.target_modules=[q_proj,v_proj]"]
    lora = ParseOnly(args).config.model.init_args.lora
    assert lora.r == 8 and lora.alpha == 32 and lora.target_modules == ["q_proj", "v_proj"]
    assert ParseOnly(["--config", "configs/quickstart.yaml"]).config.model.init_args.lora is None
    with pytest.raises(SystemExit):
        ParseOnly(["--config", "configs/quickstart.yaml", "--model.init_args.lora.bias=some"])


# -- the reference after a cold start -----------------------------------------------------------
def test_reference_weights_stand_in_for_the_adapters_and_are_put_back(trained):
    module = trained["module"]
    now = adapters(module)
    module.reference_weights = {n: torch.zeros_like(p) for n, p in module.policy.named_parameters() if p.requires_grad}
    try:
        with module.reference_context() as ref:
            assert ref is module.policy and not ref.training
            assert all(torch.count_nonzero(p) == 0 for n, p in ref.named_parameters() if "lora_" in n)
    finally:
        module.reference_weights = None
    after = adapters(module)
    assert all(torch.equal(after[k], now[k]) for k in now)  # bit for bit


def test_cold_start_makes_the_warmed_up_adapters_the_reference(tmp_path):
    """With LoRA the reference was the base with its adapters disabled, so after ColdStart's
    warm-up the KL term pulled GRPO back to the untrained model (kl 0.029 at the first step,
    where it is 0 without LoRA). Now the reference runs with the warm-up's adapters, and a
    checkpoint keeps them for a resume."""
    from callbacks import ColdStart
    from lit_vr1.data.datamodule import GroundingDataModule
    from lit_vr1.data.synthetic import SyntheticSpec

    seed_everything(0)
    module = make_module(lora=SPEC)
    data = GroundingDataModule(synthetic=SyntheticSpec(num_samples=8, canvas=56, max_shapes=1),
                               synthetic_dir=str(tmp_path / "data"), batch_size=1, num_val_samples=0)
    seen = AdaptersAtStart()  # after ColdStart (which runs first, in on_train_start)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, 1, [ColdStart(steps=4, lr=5e-3, batch_size=2), seen, ckpt]).fit(module, data)
    assert module.last_metrics["kl"] == 0.0  # the first step's policy is its reference
    ref = module.reference_weights
    warm = {k.removeprefix("policy."): v for k, v in seen.adapters.items()}
    assert ref is not None and set(ref) == set(warm)
    assert all(torch.equal(ref[k], warm[k]) for k in ref)  # the warm-up's adapters, not the base's
    assert any(torch.count_nonzero(v) for k, v in ref.items() if "lora_B" in k)  # the warm-up moved them
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["lit_vr1_reference_weights"]
    assert all(torch.equal(saved[k], ref[k]) for k in ref)
    resumed = make_module(lora=SPEC)
    trainer(tmp_path / "resume", 2, []).fit(resumed, data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
                                            weights_only=True)  # the data module's hparams: SyntheticSpec, paths
    assert all(torch.equal(resumed.reference_weights[k], ref[k]) for k in ref)


def test_the_export_command_reads_a_checkpoint_written_from_python(trained, tmp_path):
    """A Python fit's hyperparameters hold GRPOConfig and LoraSpec objects (the CLI's hold plain
    values and the class path): the export refused them as objects a weights-only load refuses,
    then found no class to build. Now it writes the merged model."""
    import subprocess
    import sys

    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "lit_vr1.export", trained["ckpt"], str(out)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    processor = trained["module"].processor
    exported, merged = load_model(str(out), processor), load_model(trained["merged"], processor)
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), merged.state_dict().values()))


def test_the_export_command_reads_a_sharded_checkpoint_folder(trained, tmp_path):
    """FSDP2's checkpoints (configs/strategy/fsdp2.yaml: save_distributed_checkpoint) are folders
    written by torch.distributed.checkpoint: the export said "does not exist" (helper-79). The
    same checkpoint written as such a folder exports the same model; a folder that lost a shard
    is one line naming it."""
    import subprocess
    import sys

    import torch.distributed.checkpoint as dcp

    whole = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    folder = tmp_path / "last.ckpt"
    dcp.save({"state_dict": whole.pop("state_dict")}, checkpoint_id=str(folder), no_dist=True)
    torch.save(whole, folder / "meta.pt")  # the rest, as Lightning's ModelParallelStrategy writes it
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "lit_vr1.export", str(folder), str(out)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    processor = trained["module"].processor
    exported, merged = load_model(str(out), processor), load_model(trained["merged"], processor)
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), merged.state_dict().values()))
    from lit_vr1.cli import checkpoint_model_settings

    settings = checkpoint_model_settings(str(folder))  # validate / predict --ckpt_path <folder> build this model
    assert settings["class_path"].endswith("GRPOModule") and settings["init_args"]["lora"]
    for shard in folder.glob("*.distcp"):
        shard.unlink()
    proc = subprocess.run([sys.executable, "-m", "lit_vr1.export", str(folder), str(tmp_path / "hf2")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"sharded checkpoint {folder} is incomplete: " in proc.stderr and "distcp missing" in proc.stderr


def test_a_bf16_merge_that_rounds_the_update_away_warns_and_float32_keeps_it(tmp_path):
    """Merging adapters into bf16 weights rounds each merged weight: an update far below a
    weight's last bit is lost (a new user's 3 steps at lr 1e-5: 88% of the adapted weights
    bit-identical to the base after the merge), silently. It now warns with the share lost, and
    dtype="float32" keeps the update whole (its config says so, for dtype="auto" loads)."""
    import json
    import warnings

    from transformers import AutoModelForImageTextToText

    from lit_vr1.models.loading import load_processor
    from lit_vr1.models.lora import save_merged

    processor = load_processor("tiny:qwen2_5_vl")
    policy = apply_lora(load_model("tiny:qwen2_5_vl", processor, dtype="bfloat16"), SPEC)
    torch.manual_seed(0)
    for layer in lora_layers(policy).values():
        layer.lora_B["default"].weight.data.normal_(0, 1e-6)  # a small update, as after a few steps at lr 1e-5
    with pytest.warns(UserWarning, match=r"into bfloat16 weights rounded away (9\d|100)% of their update"):
        loss = save_merged(policy, str(tmp_path / "bf16"), processor)
    assert loss.lost > 0.9 and loss.dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning
        loss = save_merged(policy, str(tmp_path / "fp32"), processor, dtype="float32")
    assert loss.lost == 0.0
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["dtype"] == "float32"
    import os  # every file as the umask allows: the weights came out -rw------- beside -rw-r--r-- (helper-85)

    mask = os.umask(0)
    os.umask(mask)
    assert {(tmp_path / "fp32" / name).stat().st_mode & 0o777 for name in os.listdir(tmp_path / "fp32")} == {
        0o666 & ~mask}
    reloaded = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "fp32"), dtype="auto")
    name, layer = next(iter(lora_layers(policy).items()))
    base = layer.get_base_layer().weight.float()
    update = layer.get_delta_weight("default").float()
    got = dict(reloaded.named_parameters())[name.removeprefix("base_model.model.") + ".weight"]
    assert got.dtype == torch.float32 and torch.equal(got, base + update)
    for layer in lora_layers(policy).values():
        layer.lora_B["default"].weight.data.normal_(0, 1e-1)  # an update well above bf16's resolution
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert save_merged(policy, str(tmp_path / "big"), processor).lost < 0.02


def test_a_cold_start_reference_is_refused_under_sharding_and_not_kept_without_a_reference(trained, monkeypatch):
    """Under FSDP2 the in-place swap wrote into sharded weights (a root-owned adapter's reference
    values leaked into the update's forward; mixed DTensor copies raised)."""
    from lit_vr1 import parallel

    module = trained["module"]
    with monkeypatch.context() as patch:
        patch.setattr(parallel, "is_fsdp", lambda model: True)
        with pytest.raises(RuntimeError, match="runs on one device or under DDP only"):
            module.reset_reference()
        module.reference_weights = adapters(module)
        try:
            with pytest.raises(RuntimeError, match="runs on one device or under DDP only"):
                with module.reference_context():
                    pass
        finally:
            module.reference_weights = None
    no_kl = make_module(lora=SPEC)
    no_kl.config.beta = 0.0
    no_kl.configure_model()
    no_kl.reset_reference()
    assert no_kl.reference_weights is None  # beta 0: no reference pass, nothing to keep


def test_a_lora_checkpoint_of_a_relative_base_folder_exports_from_anywhere(tmp_path, samples, monkeypatch, capsys):
    """A model-folder user (helper-51): `model: own_q25` (relative) trained LoRA; the export run from
    another directory could not find the base ("cannot be loaded", after hub retries) and had no
    way to say where it was. The checkpoint records the folder's absolute path; --model names a
    base that moved."""
    import shutil

    from lit_vr1.export import main

    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    source = make_module()
    source.configure_model()
    source.export("own_base")
    seed_everything(0)
    module = make_module("own_base", lora=SPEC)  # as `model: own_base` in a config run from tmp_path/run
    ckpt = ModelCheckpoint(dirpath=tmp_path / "run" / "ckpt", save_last=True)
    trainer(tmp_path / "run", 1, [ckpt]).fit(module, DataLoader(samples[:1], batch_size=1, collate_fn=collate))
    monkeypatch.chdir(tmp_path)  # elsewhere: "own_base" is not here
    main([str(tmp_path / "run" / "ckpt" / "last.ckpt"), "hf"])
    assert (tmp_path / "hf" / "config.json").is_file()
    shutil.move(str(tmp_path / "run" / "own_base"), str(tmp_path / "moved_base"))
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "run" / "ckpt" / "last.ckpt"), "hf2"])
    assert stop.value.code == 2
    assert "if it has moved, give its place with --model" in capsys.readouterr().err
    main([str(tmp_path / "run" / "ckpt" / "last.ckpt"), "hf3", "--model", str(tmp_path / "moved_base")])
    exported = load_model(str(tmp_path / "hf"), module.processor)
    again = load_model(str(tmp_path / "hf3"), module.processor)
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("sharded", [False, True])
def test_a_lora_checkpoint_keeps_the_base_weights_only_under_fsdp2(sharded, monkeypatch):
    """One process or DDP: the adapters alone (the base comes from the model). FSDP2's loader reads
    every weight of the module from the sharded folder, so a LoRA run there failed to resume
    ("Missing key in checkpoint state_dict: ...patch_embed.proj.weight"; helper-79); it keeps them
    all there. Checked on 2 processes: the resumed run logged every figure of an uninterrupted one."""
    from lit_vr1 import parallel

    module = make_module(lora=SPEC)
    module.configure_model()
    monkeypatch.setattr(parallel, "is_fsdp", lambda model: sharded)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == (set(module.state_dict()) if sharded else trained)
    module.on_load_checkpoint({k: v for k, v in checkpoint.items() if k != "state_dict"})  # FSDP2 loaded the weights


def test_an_export_into_a_redirected_log_writes_no_progress_bar(tiny_qwen25, tmp_path, capfd):
    """transformers' "Writing model shards" bar left \\r-joined frames in a redirected log (a trial)."""
    from transformers.utils import logging as hf_logging

    from lit_vr1.models.lora import save_merged

    model, processor = tiny_qwen25
    save_merged(model, str(tmp_path / "out"), processor)
    out = capfd.readouterr()
    assert "Writing model shards" not in out.err + out.out
    assert hf_logging.is_progress_bar_enabled()  # given back as it was

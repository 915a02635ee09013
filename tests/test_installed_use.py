"""lit-vr1 installed with pip into a user's own environment and run from their own folder (a new
user's trial): what an optional package's absence and a module of the user's own look like."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def test_an_installed_peft_that_fails_to_import_keeps_its_own_error(monkeypatch, tmp_path):
    """A peft too old for transformers 5 failed with 'cannot import name ...' and was reported as
    missing: 'pip install peft' then answered 'already satisfied' (helper-64)."""
    from lit_vr1.models.lora import LoraSpec, apply_lora

    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "__init__.py").write_text("from transformers import NoSuchCache\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "peft", raising=False)
    with pytest.raises(ImportError, match="NoSuchCache") as raised:
        apply_lora(nn.Linear(2, 2), LoraSpec())
    assert "pip install peft" not in str(raised.value)


def test_an_export_of_a_plain_model_needs_no_peft(monkeypatch):
    """is_lora imported peft whatever the model: every export crashed without peft installed."""
    from lit_vr1.models.lora import LoraSpec, apply_lora, is_lora

    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed
    assert is_lora(nn.Linear(2, 2)) is False
    with pytest.raises(ImportError, match=r"model\.lora needs the peft package: pip install peft"):
        apply_lora(nn.Linear(2, 2), LoraSpec())


def test_a_missing_package_that_lightning_names_is_one_line():
    """A WandbLogger or DeepSpeedStrategy without its package: jsonargparse folded Lightning's error
    into 60-86 lines of union alternatives and the whole config's value."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lit_vr1.cli import missing_package, user_error

    lightning = MisconfigurationException("To use the `DeepSpeedStrategy`, you must have DeepSpeed installed. "
                                          "Install it by running `pip install -U deepspeed`.")
    folded = ValueError(f"Does not validate against any of the Union subtypes\nErrors:\n  - Expected a <class 'str'>\n"
                        f"  - {lightning}\nGiven value: Namespace(class_path='...')")
    got = user_error(folded)
    assert isinstance(got, ImportError) and str(got) == str(lightning)
    assert str(user_error(lightning)) == str(lightning)
    assert missing_package(ValueError("Expected a <class 'int'>")) is None
    # a bug raised while handling an install hint (a fallback) keeps its traceback (helper-64)
    try:
        try:
            raise ImportError("fastkernel is missing: pip install -U fastkernel")
        except ImportError:
            {}["fallback"]
    except KeyError as bug:
        assert user_error(bug) is None


def test_a_callbacks_module_of_the_users_own_is_said_to_hide_lit_vr1s(tmp_path):
    (tmp_path / "callbacks.py").write_text("X = 1\n")
    code = "from lit_vr1.cli import shadowed_callbacks_note as n; print(n())"
    mine = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert f"a module named 'callbacks' at {tmp_path / 'callbacks.py'} hides lit-vr1's callbacks package" in mine.stdout
    ours = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert ours.stdout.strip() == "None", ours.stderr


def test_a_failed_export_at_the_fits_end_says_how_to_export(tmp_path):
    """The hint was to resume with --ckpt_path last, which at max_steps trains and exports nothing."""
    from types import SimpleNamespace

    from lit_vr1.module import export_note

    (tmp_path / "last.ckpt").write_bytes(b"x")
    saver = SimpleNamespace(last_model_path=str(tmp_path / "last.ckpt"), dirpath=str(tmp_path))
    note = export_note(SimpleNamespace(checkpoint_callbacks=[saver]), "runs/hf")
    assert note.endswith(f"python -m lit_vr1.export {tmp_path / 'last.ckpt'} runs/hf")
    steps = tmp_path / "steps"  # save_last unset: the newest step file
    steps.mkdir()
    (steps / "step=4.ckpt").write_bytes(b"x")
    saver = SimpleNamespace(last_model_path="", dirpath=str(steps))
    assert f"lit_vr1.export {steps / 'step=4.ckpt'} runs/hf" in export_note(SimpleNamespace(checkpoint_callbacks=[saver]),
                                                                           "runs/hf")
    none = export_note(SimpleNamespace(checkpoint_callbacks=[]), "runs/hf")  # nothing saved: not a made-up path
    assert "this fit saved no checkpoint to export from" in none and "lit_vr1.export" not in none


def test_lightnings_refusals_of_the_trainers_settings_are_one_line():
    """Lightning's MisconfigurationException, and the ValueError its fit loop raises for a
    val_check_interval past an epoch's batches, printed 35-54 lines of traceback above the one
    that names the setting (helper-65); a ValueError from elsewhere in Lightning is not ours to
    shorten."""
    import runpy

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lit_vr1.cli import user_error

    refused = MisconfigurationException("Trainer was configured with `enable_checkpointing=False` but found "
                                        "`ModelCheckpoint` in callbacks list.")
    assert user_error(refused) is refused
    import lightning.pytorch.loops.fit_loop as fit_loop

    try:  # a ValueError whose innermost frame is Lightning's fit loop
        exec(compile("raise ValueError('`val_check_interval` (50) must be less than or equal to the number of the "
                     "training batches (20).')", fit_loop.__file__, "exec"), {})
    except ValueError as e:
        assert user_error(e) is e
    try:
        exec(compile("raise ValueError('an internal shape')", runpy.__file__, "exec"), {})
    except ValueError as e:
        assert user_error(e) is None

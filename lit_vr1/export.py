"""Turn a Lightning checkpoint into a Hugging Face model folder.

    python -m lit_vr1.export runs/quickstart/checkpoints/last.ckpt runs/quickstart/hf_model

The folder (``save_pretrained`` of the policy, LoRA adapters merged in, and its processor)
loads with ``AutoModelForImageTextToText.from_pretrained`` and as ``model: <folder>`` in a
lit-vr1 config. The module is rebuilt from the settings saved in the checkpoint, so the
base model it names (a hub name or path) must be reachable, as in training.
"""

from __future__ import annotations

import argparse
import sys

from lit_vr1.checkpoint import load_checkpoint_file


def load_module(ckpt_path: str, model: str | None = None):
    """The LightningModule of a lit-vr1 checkpoint: built from its saved settings, its
    weights loaded (a LoRA checkpoint's adapters over the base weights). ``model``: the model
    (name or folder) to build it on instead of the one its run named (a base moved elsewhere)."""
    from jsonargparse import ArgumentParser

    from lit_vr1.cli import checkpoint_model_settings

    settings = checkpoint_model_settings(ckpt_path)
    if settings is None:
        raise ValueError(f"checkpoint {ckpt_path} holds no model settings (not written by a lit-vr1 module)")
    if model is not None:
        settings["init_args"]["model"] = model
    module_path, _, name = settings["class_path"].rpartition(".")
    cls = getattr(__import__(module_path, fromlist=[name]), name)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "model", fail_untyped=False)
    config = parser.parse_object({"model": settings["init_args"]})
    module = parser.instantiate(config).model
    module.configure_model()
    checkpoint = load_checkpoint_file(ckpt_path, map_location="cpu")
    checkpoint.pop("lit_vr1_rewards", None)  # grpo.REWARDS_KEY: an export scores nothing, so nothing to warn of
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lit_vr1.export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a .ckpt written by lit-vr1 fit")
    parser.add_argument("out_dir", help="the Hugging Face model folder to write")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="the saved weights' dtype (default: the model's own; float32 keeps a LoRA update that a "
                             "bf16 merge would round away)")
    parser.add_argument("--model", default=None,
                        help="the base model (name or folder) to build on, when it is no longer where the checkpoint's "
                             "run found it (a LoRA checkpoint holds the adapters only)")
    args = parser.parse_args(argv)
    try:
        module = load_module(args.checkpoint, args.model)
    except ValueError as e:  # a broken file, a missing base model: one message
        hint = ("" if args.model or "is missing or holds no config.json" not in str(e) else
                "\n(the model is the one the checkpoint's run was given; if it has moved, give its place with --model)")
        print(f"lit-vr1 export: error: {e}{hint}", file=sys.stderr)
        sys.exit(2)
    module.export(args.out_dir, dtype=args.dtype)
    print(f"wrote {args.out_dir} (load it with AutoModelForImageTextToText.from_pretrained or model: {args.out_dir})")


if __name__ == "__main__":
    main()

"""What a run was made with, written beside its results: ``run.json``.

A reproducibility audit (a new user's trial, 2026-12-07) found the run folder named no version
of anything but Lightning (``config.yaml``'s first line), not the seed the run drew with (only
``config.yaml``'s ``seed_everything``; ``hparams.yaml``'s ``seed`` is the tiny model's), and a
prediction folder nothing of the checkpoint or model that wrote it, while the README shows that
figures move with the host and the package build. :func:`record` gathers them; a fit, validate
or test writes it into the logger's folder (and a checkpoint keeps it), ``predict`` beside its
``predictions.jsonl`` (:class:`callbacks.PredictionWriter`).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from typing import Any

PACKAGES = ("lit-vr1", "torch", "transformers", "lightning", "peft", "torchmetrics", "jsonargparse", "tokenizers",
            "accelerate", "deepspeed", "flash-attn")
NAME = "run.json"


def versions() -> dict[str, str]:
    """The installed version of each of :data:`PACKAGES` that is installed, and Python's; torch's
    with its build (``2.14.1+cu130``: the package metadata says ``2.14.1`` alone)."""
    import torch

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["torch"] = str(torch.__version__)  # a TorchVersion, which a weights-only checkpoint load refuses
    return out


def source_commit(folder: str | None = None) -> dict[str, Any] | None:
    """The git commit of lit-vr1's own source when it runs from a checkout (an editable install),
    and whether files differ from it; None elsewhere (a wheel) or without git."""
    folder = folder or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(folder, ".git")):
        return None
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        status = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "changed_files": len(status.splitlines())} if commit else None


def host() -> dict[str, Any]:
    """The machine: its processor's name, cores, torch's thread count, and the accelerator."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
                           "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return out


def record(command: str, trainer: Any = None, module: Any = None, checkpoint: str | None = None) -> dict[str, Any]:
    """What ``command`` (fit, validate, test, predict) runs with: the versions, lit-vr1's commit,
    the seed ``seed_everything`` set (None: unseeded), the command line, the working folder, the
    checkpoint it loads (resolved: ``last`` made a path), the model and the machine."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    out: dict[str, Any] = {
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "seed_everything": int(seed) if seed is not None and seed.lstrip("-").isdigit() else None,
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "model": getattr(module, "model_name", None),
        "processes": getattr(trainer, "world_size", 1),
        "precision": str(getattr(trainer, "precision", "")) or None,
        "versions": versions(),
        "lit_vr1_source": source_commit(),
        "host": host(),
    }
    return json.loads(json.dumps(out, default=str))  # plain values only: checkpoints keep it (weights-only loads)


def write(folder: str, rec: dict[str, Any]) -> str:
    """``rec`` as ``folder/run.json`` (the folder made when missing); returns the path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rec, f, indent=2, default=str)
        f.write("\n")
    return path

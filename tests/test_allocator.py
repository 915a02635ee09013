"""Freed host memory kept for reuse (lit_vr1.allocator): the setting takes effect, can be turned
off, is applied by every entry point, and changes no number a run computes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from lit_vr1 import allocator

GLIBC = sys.platform.startswith("linux") and allocator._mallopt() is not None
needs_glibc = pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's (Linux)")

# 40 MiB tensors, above glibc's largest automatic mmap threshold (32 MiB): with its defaults each
# one is a fresh mmap whose pages fault in when written; kept, the second and later reuse the heap
FAULTS = textwrap.dedent("""
    import json, resource, sys
    from lit_vr1 import allocator
    kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
    threshold = allocator.mmap_threshold()
    import torch
    for _ in range(20):  # the heap grows to its working size over the first tensors (measured: about 12)
        x = torch.empty(10 * 2**20).fill_(1.0)
        del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        x = torch.empty(10 * 2**20).fill_(1.0)
        del x
    print(json.dumps({"kept": kept, "threshold": threshold,
                      "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
""")


def _faults(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, allocator.ENV: "1", **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_glibc
def test_kept_memory_is_reused_without_page_faults():
    pages = 40 * 2**20 // os.sysconf("SC_PAGE_SIZE")  # one tensor's pages
    kept = _faults("keep")
    assert kept["kept"] is True
    if kept["threshold"] < 40 * 2**20:
        pytest.skip(f"this glibc caps the mmap threshold at {kept['threshold']} bytes: 40 MiB tensors stay mmapped")
    default = _faults("default")
    assert kept["faults"] < pages // 10, kept  # ten tensors, not even a tenth of one's pages faulted
    # glibc's defaults fault every tensor in again (fewer faults per tensor under transparent huge pages)
    assert default["faults"] > 10 * kept["faults"] + 50, (default, kept)


@needs_glibc
def test_off_unless_the_environment_asks():
    assert _faults("keep", **{allocator.ENV: "0"})["kept"] is False
    assert _faults("keep", **{allocator.ENV: ""})["kept"] is False


def test_once_per_process(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "1")
    calls = []
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "_mallopt", lambda: (lambda option, value: calls.append((option, value)) or 1))
    assert allocator.keep_freed_memory() is True and allocator.applied()
    assert allocator.keep_freed_memory() is True
    assert calls == [(allocator.M_MMAP_THRESHOLD, allocator.THRESHOLD), (allocator.M_TRIM_THRESHOLD, allocator.THRESHOLD)]
    assert allocator.mmap_threshold() == allocator.THRESHOLD


def test_a_glibc_that_caps_the_mmap_threshold_gets_its_cap(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "1")
    calls = []

    def capped(option, value):  # older glibc: mmap thresholds above 32 MiB refused
        calls.append((option, value))
        return int(option != allocator.M_MMAP_THRESHOLD or value <= allocator.CAPPED)

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "_mallopt", lambda: capped)
    assert allocator.keep_freed_memory() is True
    assert allocator.mmap_threshold() == allocator.CAPPED
    assert calls[-1] == (allocator.M_TRIM_THRESHOLD, allocator.THRESHOLD)  # the trim threshold set all the same


def test_refused_or_absent_is_false(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "1")
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "_mallopt", lambda: (lambda option, value: 0))
    assert allocator.keep_freed_memory() is False and not allocator.applied()
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "_mallopt", lambda: None)
    assert allocator.keep_freed_memory() is False


def test_cpu_runs_and_the_demo_apply_it_gpu_runs_do_not(monkeypatch, tmp_path):
    from lightning.pytorch import Trainer

    from lit_vr1 import demo
    from lit_vr1.module import VLMModule

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    module = VLMModule(model="tiny:qwen2_5_vl")
    module.configure_model()  # no Trainer (a notebook building the model itself): not applied
    assert calls == []
    module.policy = None
    module.trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    module.configure_model()
    assert len(calls) == 1

    class NotCPU:  # another accelerator (a GPU's): host memory holds weights on their way over, not applied
        pass

    module.policy = None
    monkeypatch.setattr(module.trainer.strategy, "_accelerator", NotCPU())
    module.configure_model()
    assert len(calls) == 1
    with pytest.raises(SystemExit):
        demo.main(["--seed", "0", "--task", "nonsense"])  # refused by argparse: before anything runs
    assert len(calls) == 1
    with pytest.raises(SystemExit):  # an SFT model that is not there: refused after the thresholds are set
        demo.main(["--sft-model", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    assert len(calls) == 2


TRAIN = textwrap.dedent("""
    import hashlib, sys, torch
    from lit_vr1 import allocator
    from lit_vr1.cli import LitVR1CLI
    torch.set_num_threads(1)
    cli = LitVR1CLI(args=["--config", "configs/sft_detection.yaml", "--trainer.max_steps=3", "--trainer.logger=false",
                          "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
                          "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                          "--trainer.enable_model_summary=false", "--data.init_args.batch_size=4",
                          "--data.init_args.synthetic.num_samples=16", "--model.init_args.export_dir=null",
                          "--data.init_args.num_val_samples=4", "--data.init_args.synthetic_dir=" + sys.argv[1]],
                    run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    digest = hashlib.sha256()
    for name, p in sorted(cli.model.policy.state_dict().items()):
        digest.update(name.encode()); digest.update(p.detach().float().numpy().tobytes())
    print(allocator.applied(), digest.hexdigest())
""")


@needs_glibc
def test_training_is_bit_identical_with_and_without(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def trained(flag: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / "data")], capture_output=True, text=True,
                             check=True, cwd=root, env={**os.environ, allocator.ENV: flag})
        return out.stdout.strip().splitlines()[-1].split()

    on, off = trained("1"), trained("0")
    assert on[0] == "True" and off[0] == "False"
    assert on[1] == off[1]

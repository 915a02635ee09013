"""The GPU check (benchmarks/gpu_check.sh) cannot rot: its Python runs here at toy size on
the CPU, every part of it, and its wheel list covers what lit-vr1 imports beyond the GPU
machine's image."""

from __future__ import annotations

import ast
import json
import re
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# imported by lit-vr1 only for an optional feature that the GPU check does not use
OPTIONAL = {
    "deepspeed": "DeepSpeed strategies (not installed on the image; the check runs one GPU without it)",
    "wandb": "the wandb logger",
    "math-verify": "Accuracy(mode='math')",
    "flash-attn": "attn_implementation=flash_attention_2",
    "ipykernel": "the notebooks", "nbclient": "the notebooks", "nbformat": "the notebooks",
}


def _names(path: str) -> set[str]:
    return {re.split(r"[\s=<>~;\[#]", line.strip())[0].lower().replace("_", "-")
            for line in (ROOT / path).read_text().splitlines() if line.strip() and not line.startswith("#")}


def _imported_distributions() -> set[str]:
    files = [*ROOT.glob("lit_vr1/**/*.py"), *ROOT.glob("callbacks/*.py"), ROOT / "benchmarks" / "gpu_check.py",
             ROOT / "benchmarks" / "vs_trl.py", ROOT / "benchmarks" / "vision_chunks.py"]
    modules = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    dists = metadata.packages_distributions()
    own = {"lit_vr1", "callbacks", "vs_trl", "bench_model"}
    out = set()
    for module in modules - own - set(sys.stdlib_module_names):
        names = dists.get(module) or ([module.replace("_", "-")] if module.replace("_", "-") in OPTIONAL else None)
        assert names, f"{module} is imported but no installed distribution provides it"
        out |= {n.lower().replace("_", "-") for n in names}
    return out


def test_the_wheel_list_covers_every_import_the_image_lacks():
    image, wheels = _names("benchmarks/gpu_image_packages.txt"), _names("benchmarks/gpu_wheels.txt")
    missing = sorted(d for d in _imported_distributions() if d not in image | wheels | set(OPTIONAL))
    assert not missing, f"imported, not on the GPU image and not in benchmarks/gpu_wheels.txt: {missing}"
    # jsonargparse[signatures] is what LightningCLI needs; its parts must travel too
    assert {"jsonargparse", "docstring-parser", "typeshed-client"} <= wheels


def test_the_gpu_check_runs_every_part_at_toy_size_on_the_cpu(tmp_path):
    import gpu_check

    out = tmp_path / "gpu_check.json"
    result = gpu_check.main(["--size", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0",
                             "--json", str(out), "--budget-s", "1000"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [t["recipe"] for t in result["twins"]] == gpu_check.RECIPES
    for twin in result["twins"]:
        assert twin["ok"] and twin["steps"] == 2 and twin["weights_moved"], twin
        assert twin["precision"] == "bf16-mixed" and twin["trained_dtype"] == "torch.float32", twin
    for variant in ("full", "frozen_vision", "lora"):
        lit = result["grpo"][variant]["lit"]
        assert lit["step_s"] > 0 and lit["completion_tokens_per_s"] > 0 and lit["rollout_s"] > 0, lit
    assert result["grpo"]["full"]["trl"]["step_s"] > 0 and result["grpo"]["full"]["ratio_tokens_per_s"] > 0
    assert result["versions"]["torch"] and result["versions"]["trl"] == "1.16.0"
    for name in ("graph", "eager"):  # the decode profile (on the CPU the graph is not captured)
        profiled = result["decode_profile"][name]
        assert profiled["rollout_s"] > 0 and len(profiled["top"]) > 3, profiled
        assert any("linear" in e["name"] or "mm" in e["name"] for e in profiled["top"]), profiled["top"]

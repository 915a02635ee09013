"""The package's shape: dependencies run one way, and each setting and helper has one home.

Read with the standard library's ``ast`` from the source, so these hold for every import
(at module level, inside functions, under ``TYPE_CHECKING``) without importing anything."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lit_vr1", "callbacks")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8"))
            for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def import_graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """module -> the package modules it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in trees)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
        graph[name] = {d for d in deps if d in trees and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_among_the_package_modules():
    graph = import_graph(sources())
    assert len(graph) > 50 and graph["lit_vr1.loop"] >= {"lit_vr1.scoring", "lit_vr1.generation", "lit_vr1.config"}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_runs_one_way():
    """The loop knows the module only through its Learner protocol; scoring and generation
    know nothing of the loop, the module or Lightning."""
    graph = import_graph(sources())
    assert "lit_vr1.grpo" not in graph["lit_vr1.loop"]
    for low in ("lit_vr1.scoring", "lit_vr1.generation", "lit_vr1.shared_prompt", "lit_vr1.rollout", "lit_vr1.config",
                "lit_vr1.loss", "lit_vr1.rules"):
        assert not graph[low] & {"lit_vr1.loop", "lit_vr1.grpo", "lit_vr1.module", "lit_vr1.sft"}, low


def test_each_shared_name_is_defined_once():
    """One home for what used to be written twice: the box frames, the vision token ids, the
    row selection of a batch, the peft unwrapping, the settings' dataclasses."""
    defined = defaultdict(list)
    for name, tree in sources().items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defined[node.name].append(name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        defined[target.id].append(name)
    for shared in ("BOX_FRAMES", "vision_token_ids", "select_rows", "base_model", "GRPOConfig", "SamplingConfig",
                   "Rollout", "ImageFeatures", "teacher_forced", "logprobs", "encode_prompts", "LOSS_TYPES"):
        assert len(defined[shared]) == 1, (shared, defined[shared])
    # gone: the third and second names of the row selection, the scoring helpers the loop and two modules kept,
    # dead code, the strategy check outside checks.py and the hand-typed rule list
    for gone in ("prompt_rows", "policy_logprobs", "distribution_logits_of", "input_sizes", "check_strategy", "RULES"):
        assert gone not in defined, (gone, defined[gone])
    assert defined["completion_logits"] == ["lit_vr1.shared_prompt"]  # the shared-prompt pass; scoring owns the rest


def test_peft_wrappers_are_unwrapped_in_one_place():
    """Only families.base_model looks for get_base_model (the LoRA wrapper class itself aside)."""
    users = sorted(name for name, tree in sources().items()
                   for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value == "get_base_model")
    assert users == ["lit_vr1.models.families.base"]

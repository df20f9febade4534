"""The import layers of src/rlhfkit hold: no package imports a higher layer, no two packages import
each other (directly or round a longer loop), and no two modules of one package do either.

Layers: errors 0; objectives 1 (pure math); the components 2 (data, models, rollout, rewards,
tasks, eval, feedback, runtime and any new package); train 3 (with the frontier, a recipe of
trainers like iterative GRPO); pipeline, pipeline_config and pipeline_table 4; cli, cli_models,
cli_label and __main__ 5. Every
import counts, function-level ones included. (The CLI's command table names its modules as
strings; the CLI is the top layer, so those cannot point upward.)
"""

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rlhfkit"
LAYERS = {
    "errors": 0,
    "objectives": 1,
    "train": 3,
    "pipeline": 4,
    "pipeline_config": 4,
    "pipeline_table": 4,
    "cli": 5,
    "cli_models": 5,
    "cli_label": 5,
    "__main__": 5,
}
COMPONENTS = 2


@dataclass(frozen=True)
class Import:
    source: str
    """The importing module, dotted below the root package ("eval.run_eval")."""
    target: str
    """The imported module, dotted the same way ("train.reward"); a package is its name."""
    where: str
    """file:line, for the failure message."""


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def import_edges(root: Path, package: str = "rlhfkit") -> list[Import]:
    """Every import of a module of `package` by a module under `root`, at any depth of the code."""
    modules = {module_name(path, root) for path in root.rglob("*.py")}
    edges = []
    for path in sorted(root.rglob("*.py")):
        source = module_name(path, root)
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, source, is_package, package)
                # `from rlhfkit.tasks import advice_critique` imports a module, not the package
                names = [f"{base}.{alias.name}" for alias in node.names]
                names = [name if _inner(name, package) in modules else base for name in names]
            else:
                continue
            for name in names:
                target = _inner(name, package)
                if target is not None and target != source:
                    edges.append(Import(source, target, f"{path.relative_to(root)}:{node.lineno}"))
    return sorted(set(edges), key=lambda edge: (edge.source, edge.where, edge.target))


def _absolute(node: ast.ImportFrom, source: str, is_package: bool, package: str) -> str:
    if node.level == 0:
        return node.module or ""
    parts = [package, *source.split(".")] if source != "__init__" else [package]
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _inner(name: str, package: str) -> str | None:
    """ "rlhfkit.eval.report" -> "eval.report"; None for other packages' modules."""
    if name == package:
        return "__init__"
    return name[len(package) + 1 :] if name.startswith(package + ".") else None


def top(module: str) -> str:
    return module.split(".")[0]


def layer(module: str) -> int:
    return LAYERS.get(top(module), COMPONENTS)


def upward_imports(edges: list[Import]) -> list[str]:
    return [
        f"{edge.where}: {edge.source} (layer {layer(edge.source)}) imports {edge.target} "
        f"(layer {layer(edge.target)})"
        for edge in edges
        if top(edge.source) != "__init__" and layer(edge.target) > layer(edge.source)
    ]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one node (each is at least one cycle)."""

    def reach(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for nxt in graph.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    reachable = {node: reach(node) for node in graph}
    groups = {
        frozenset([node, *(other for other in reachable[node] if node in reachable.get(other, ()))])
        for node in graph
    }
    return sorted(sorted(group) for group in groups if len(group) > 1)


def package_cycles(edges: list[Import]) -> list[str]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if top(edge.source) != top(edge.target):
            graph.setdefault(top(edge.source), set()).add(top(edge.target))
    return [_describe(group, edges, top) for group in cycles(graph)]


def module_cycles(edges: list[Import]) -> list[str]:
    """Cycles between modules of one package (its __init__ counts as a module of it)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if top(edge.source) == top(edge.target):
            graph.setdefault(edge.source, set()).add(edge.target)
    return [_describe(group, edges, lambda module: module) for group in cycles(graph)]


def _describe(group: list[str], edges: list[Import], key) -> str:
    inside = [
        f"{edge.where} imports {edge.target}"
        for edge in edges
        if key(edge.source) != key(edge.target)
        and key(edge.source) in group
        and key(edge.target) in group
    ]
    return f"cycle {' <-> '.join(group)}: " + "; ".join(inside)


EDGES = import_edges(SRC)


def test_the_import_scan_sees_the_package():
    sources = {edge.source for edge in EDGES}
    assert {"cli", "pipeline", "train.ppo", "eval.run_eval", "tasks.advice"} <= sources
    # function-level imports count: the CLI's tasks command imports the registry in a function
    assert any(edge.source == "cli" and edge.target == "tasks.registry" for edge in EDGES)


def test_no_package_imports_a_higher_layer():
    assert upward_imports(EDGES) == []


def test_no_two_packages_import_each_other():
    assert package_cycles(EDGES) == []


def test_no_two_modules_of_one_package_import_each_other():
    assert module_cycles(EDGES) == []


@pytest.fixture
def tangled(tmp_path):
    """A package with an upward import (eval -> train), a package cycle round three packages
    (tasks -> feedback -> data -> tasks) and a module cycle hidden in a function
    (tasks.a <-> tasks.b)."""
    files = {
        "__init__.py": "",
        "errors.py": "",
        "eval/__init__.py": "",
        "eval/run.py": "from rlhfkit.train.reward import load\n",
        "train/__init__.py": "",
        "train/reward.py": "from rlhfkit.errors import x\nfrom ..eval import run\n",
        "tasks/__init__.py": "",
        "tasks/a.py": (
            "from rlhfkit.feedback.critique import p\n\ndef f():\n    from rlhfkit.tasks import b\n"
        ),
        "tasks/b.py": "from . import a\n",
        "feedback/__init__.py": "",
        "feedback/critique.py": "import rlhfkit.data.formats\n",
        "data/__init__.py": "",
        "data/formats.py": "def g():\n    from rlhfkit.tasks.a import f\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return import_edges(tmp_path)


def test_the_checks_find_an_upward_import_and_cycles(tangled):
    assert upward_imports(tangled) == [
        "eval/run.py:1: eval.run (layer 2) imports train.reward (layer 3)"
    ]
    found = package_cycles(tangled)
    assert [line.split(":")[0] for line in found] == [
        "cycle data <-> feedback <-> tasks",
        "cycle eval <-> train",
    ]
    assert "train/reward.py:2 imports eval.run" in found[1]  # a relative import resolved
    assert [line.split(":")[0] for line in module_cycles(tangled)] == ["cycle tasks.a <-> tasks.b"]

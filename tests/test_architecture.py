"""The import graph follows DESIGN.md's one-way data flow.

data -> model(recipe) -> train -> checkpoint -> export -> runtime -> targets / verify / fewshot
/ detect -> bench -> jobs -> cli: no module imports a later stage, no two modules import each
other at module level, and the deployment side (runtime/, targets/, the numeric core and the
foundation modules) imports neither torch nor brevitas, not even inside a function.

Every module under lowbit/ is parsed with ast, so an import inside a function counts as much
as one at the top of the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "lowbit"

# Stage of each module, by the longest dotted prefix that names it. Modules of one stage may
# import each other (acyclically); a module may import any earlier stage.
STAGES: dict[str, int] = {
    # foundation, usable by every stage: errors, atomic files, file names and schemas, the
    # writer lock, export manifests, ONNX graph helpers, the torch-free numeric core, and
    # plain-text tables (a formatter that imports nothing of lowbit)
    "lowbit": 0,
    "lowbit.errors": 0,
    "lowbit.io": 0,
    "lowbit.artifacts": 0,
    "lowbit.lock": 0,
    "lowbit.manifest": 0,
    "lowbit.onnx_graph": 0,
    "lowbit.core": 0,
    "lowbit.tables": 0,
    "lowbit.data": 1,
    "lowbit.quant": 2,  # model(recipe): the recipe and its quantizers come before the model
    "lowbit.models": 3,
    "lowbit.train": 4,  # the checkpoint is train's output (lowbit/train/checkpoint.py)
    "lowbit.export": 5,
    "lowbit.runtime": 6,
    # consumers of an export, one level: they may import each other, acyclically
    "lowbit.targets": 7,
    "lowbit.verify": 7,
    "lowbit.fewshot": 7,
    "lowbit.detect": 7,
    "lowbit.deploy": 7,  # a trained run -> a calibrated export with its targets' files
    "lowbit.infer": 7,  # runs model.int.onnx through the runtime, scores as fewshot does
    "lowbit.bench": 8,
    "lowbit.jobs": 9,
    # the command line: parsing, printing and the words it prints
    "lowbit.report_text": 10,
    "lowbit.cli": 10,
    "lowbit.__main__": 10,
}

# Deployment-side code: runs where only numpy and onnx are installed.
TORCH_FREE = (
    "lowbit.runtime",
    "lowbit.targets",
    "lowbit.core",
    "lowbit.errors",
    "lowbit.io",
    "lowbit.artifacts",
    "lowbit.lock",
    "lowbit.manifest",
    "lowbit.onnx_graph",
    "lowbit.tables",
)
TORCH_PACKAGES = ("torch", "brevitas")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """Returns (imported module, line, at module level) for every import in the file; `from
    package import name` counts as importing package.name when that is a module."""
    module = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` and try/except blocks at the top still count
        if isinstance(node, (ast.If, ast.Try)):
            top_level.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, path.name == "__init__.py")
            names = [base]
            names += [
                f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")
            ]
        else:
            continue
        found += [(name, node.lineno, id(node) in top_level) for name in names]
    return found


def _is_module(name: str) -> bool:
    if not name.startswith("lowbit"):
        return False
    path = PACKAGE_ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def stage_of(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in STAGES:
            return STAGES[prefix]
    raise KeyError(module)


def lowbit_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int, bool]]]:
    return {name: imports_of(path) for name, path in lowbit_modules().items()}


def test_every_module_has_a_stage() -> None:
    unplaced = []
    for name in lowbit_modules():
        try:
            stage_of(name)
        except KeyError:
            unplaced.append(name)
    assert not unplaced, f"modules without a stage in STAGES: {unplaced}"


def test_no_module_imports_a_later_stage(graph) -> None:
    later = [
        f"{module} (stage {stage_of(module)}) line {line} imports {target} "
        f"(stage {stage_of(target)})"
        for module, imports in graph.items()
        for target, line, _ in imports
        if target.startswith("lowbit") and stage_of(target) > stage_of(module)
    ]
    assert not later, "imports against the data flow:\n" + "\n".join(later)


def _module_level_edges(graph) -> dict[str, set[str]]:
    modules = set(graph)
    edges: dict[str, set[str]] = {name: set() for name in graph}
    for module, imports in graph.items():
        for target, _, top in imports:
            if top and target in modules and target != module:
                edges[module].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """Returns one cycle [a, b, ..., a] of the directed graph, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_at_module_level(graph) -> None:
    # a package's __init__ importing its own submodules is how a package exposes them
    edges = {
        module: {t for t in targets if not module.startswith(f"{t}.")}
        for module, targets in _module_level_edges(graph).items()
    }
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_two_modules_import_each_other(graph) -> None:
    # at any level: a function-local import back is still a two-way dependency
    modules = set(graph)
    edges = {m: {t for t, _, _ in imports if t in modules} for m, imports in graph.items()}
    pairs = [
        f"{a} <-> {b}"
        for a in sorted(edges)
        for b in sorted(edges[a])
        if a < b and a in edges[b] and not (a.startswith(f"{b}.") or b.startswith(f"{a}."))
    ]
    assert not pairs, "modules that import each other: " + ", ".join(pairs)


def test_find_cycle_reports_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_deployment_side_imports_no_torch(graph) -> None:
    found = [
        f"{module} line {line} imports {target}"
        for module, imports in graph.items()
        if module.startswith(TORCH_FREE) and module != "lowbit"
        for target, line, _ in imports
        if target.split(".")[0] in TORCH_PACKAGES
    ]
    assert not found, "torch or brevitas on the deployment side:\n" + "\n".join(found)

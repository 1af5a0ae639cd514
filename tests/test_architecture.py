"""The packages' imports point one way (docs/architecture.md): a test, so an arrow back up fails the suite.

Every import counts, lazy ones inside functions and TYPE_CHECKING ones too: a lazy import hides a circle from
Python, not from a reader.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# bottom to top: a package may import its own layer and those below it
LAYERS = {"tools": 0, "decoding": 1, "agent": 2, "evals": 3, "tui": 4}
# inside decoding/: the engine and the drafting vocabulary, then serving, then vLLM, then the lab
DECODING_LAYERS = {"engine": 0, "drafting": 0, "serving": 1, "vllm": 2, "lab": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_modules() -> dict[str, Path]:
    return {module_name(p): p for package in LAYERS for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (a `from package import module` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in modules:
                found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules}
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = internal_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def layer(module: str) -> tuple[int, int]:
    parts = module.split(".")
    inner = DECODING_LAYERS.get(parts[1], 0) if parts[0] == "decoding" and len(parts) > 1 else 0
    return LAYERS[parts[0]], inner


def test_no_module_imports_a_package_above_its_own(graph):
    upward = []
    for module, targets in graph.items():
        for target in targets:
            if module.split(".")[0] == "decoding" and target.split(".")[0] == "decoding":
                if layer(target)[1] > layer(module)[1]:
                    upward.append(f"{module} -> {target}")
            elif layer(target)[0] > layer(module)[0]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports pointing up:\n" + "\n".join(sorted(upward))


def test_the_module_graph_has_no_cycle(graph):
    state: dict[str, int] = {}  # 1 on the path being walked, 2 done
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := walk(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := walk(module)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_walk_sees_lazy_imports(tmp_path):
    """The check must not be fooled by an import tucked inside a function (the old drafters <-> mtp circle)."""
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from decoding.drafting import mtp\n    import tools.ot\n")
    assert imports_of(source, internal_modules()) == {"decoding.drafting", "decoding.drafting.mtp", "tools.ot"}


def test_grounding_imports_nothing_of_the_embedded_engine(graph):
    """A vLLM logits processor uses `decoding.engine.grounding` as it is: of the project, it imports tools only."""
    assert all(target.startswith("tools.") for target in graph["decoding.engine.grounding"])

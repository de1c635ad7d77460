"""The package's shape: a pure-torch engine, an import graph without cycles, nothing reaching up into the CLI."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sift_cli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node that can execute: `if TYPE_CHECKING:` blocks only feed annotations and are left out."""
    nodes = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            nodes += [child for branch in node.orelse for child in [branch, *runtime_nodes(branch)]]
            continue
        nodes += [node, *runtime_nodes(node)]
    return nodes


def dynamic_targets(node: ast.AST, paths: dict[str, Path]) -> set[str]:
    """The modules an `import_module(f"sift_cli.apps.{name}.app")` call can load: every module its
    f-string's fixed parts match, so a registry that imports by name still shows its edges."""
    if not (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
        return set()
    if not node.args or not isinstance(node.args[0], ast.JoinedStr):
        return set()
    parts = [re.escape(part.value) if isinstance(part, ast.Constant) else r"[\w.]+" for part in node.args[0].values]
    pattern = re.compile("".join(parts) + "$")
    return {name for name in paths if pattern.match(name)}


def import_graph() -> dict[str, set[str]]:
    """module -> the sift_cli modules it imports at run time anywhere in its body (lazy imports inside
    functions and imports by a formatted name count)."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base)
            targets |= dynamic_targets(node, paths)
        graph[name] = {target for target in targets if target in paths and target != name}
    return graph


def test_the_engine_imports_only_torch() -> None:
    probe = (
        "import sys, sift_cli.engine; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('sift_cli', 'transformers', 'pydantic')))))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    assert loaded and all(name == "sift_cli" or name.startswith("sift_cli.engine") for name in loaded), loaded


def test_the_import_graph_has_no_cycles() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target) :] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_nothing_reaches_up_into_the_cli() -> None:
    graph = import_graph()
    assert [name for name, targets in graph.items() if "sift_cli.cli" in targets] == []
    assert all(not target.startswith("sift_cli.") or target.startswith("sift_cli.engine") for target in
               set().union(*(graph[name] for name in graph if name.startswith("sift_cli.engine"))))


def test_the_training_path_is_small_modules() -> None:
    """The loop, its transactions, checkpoints and launch glue, and the engine: each file one job,
    none so long that a reader loses the thread."""
    long = {str(path.relative_to(PACKAGE)): n for folder in ("training", "engine") for path in (PACKAGE / folder).rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}

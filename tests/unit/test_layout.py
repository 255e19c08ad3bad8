"""The shape of the codebase: the design card's modules at the top, the rest in one package, no
code that edits sys.path, and no import cycle among the project's modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = {"main.py", "agents_config.py", "crew_factory.py", "stream_manager.py", "worker.py", "test_import.py"}
SOURCE_DIRS = ("delivery", "tests", "bench", "quality")


def python_files() -> list[Path]:
    files = [ROOT / name for name in TOP_LEVEL]
    for folder in SOURCE_DIRS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_root_holds_only_the_design_cards_modules():
    assert {p.name for p in ROOT.glob("*.py")} == TOP_LEVEL


def test_no_code_edits_sys_path():
    offenders = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"sys.path is touched at {offenders}; install the project (make install) instead"


def _imports(path: Path, own: set[str]) -> set[str]:
    """Project modules `path` imports, anywhere in it (lazy imports included), except those only
    read by type checkers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(n) for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in own}
    return found


def test_no_import_cycles_among_the_projects_modules():
    files = {module_name(p): p for p in python_files()}
    own = set(files)
    graph = {name: _imports(path, own) - {name} for name, path in files.items()}
    # A module also depends on its package's __init__; packages here hold docstrings only.
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_packages_hold_no_code_in_their_init():
    for init in (ROOT / "delivery").rglob("__init__.py"):
        body = ast.parse(init.read_text(encoding="utf-8")).body
        code = [
            n
            for n in body
            if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
            and not (isinstance(n, ast.Assign) and init.parent.name == "delivery")
        ]
        assert not code, f"{init.relative_to(ROOT)} should hold only its docstring"


def test_the_client_and_the_cli_use_none_of_the_servers_modules():
    """So `delivery.client` can be copied, or installed, next to code that has no CrewAI."""
    own = {module_name(p) for p in python_files()}
    assert _imports(ROOT / "delivery" / "client.py", own) == set()
    assert _imports(ROOT / "delivery" / "cli.py", own) == {"delivery.client"}

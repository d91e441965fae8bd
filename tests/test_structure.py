"""The package's structure keeps its rules (issue 19), read from the source: imports point one way
(no circle; nothing imports the command line but __main__), no function is longer than 80 lines,
each run-directory file name is spelled in rundir only, and exit codes come from errors' table."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "backprop_lab"
MODULES = {p.stem: ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.glob("*.py"))}
RUN_DIR_FILES = {"summary.json", "metrics.csv", "grads.csv", "checkpoint.pt", "weights.pt", "confusion.csv",
                 "confusion.png", "curves.png", "errors.png", "backprop-lab.log", "sweep_summary.csv",
                 "sweep_summary.json"}
MAX_FUNCTION_LINES = 80


def imports(tree: ast.Module) -> set[str]:
    """The package's modules this one imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("backprop_lab."):
            found.add(node.module.split(".")[1])
    return found & set(MODULES)


def test_no_import_circle():
    graph = {name: imports(tree) - {name} for name, tree in MODULES.items()}
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                pytest.fail("import circle: " + " -> ".join(path[path.index(other):] + [other]))
            if other not in state:
                visit(other, path + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_nothing_imports_the_command_line_but_the_entry_point():
    assert sorted(name for name, tree in MODULES.items() if "cli" in imports(tree)) == ["__main__"]


def test_no_function_is_longer_than_80_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in MODULES.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def code_strings(tree: ast.Module) -> list[ast.Constant]:
    """String constants other than docstrings."""
    docstrings = {id(body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and (body := node.body) and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_each_run_directory_file_name_is_spelled_in_rundir_only():
    spelled = sorted(f"{name}: {n.value}" for name, tree in MODULES.items() if name != "rundir"
                     for n in code_strings(tree) if n.value in RUN_DIR_FILES)
    assert spelled == []


def test_exit_codes_come_from_the_one_table():
    defined = sorted(f"{name}.{t.id}" for name, tree in MODULES.items() if name != "errors"
                     for node in tree.body if isinstance(node, ast.Assign)
                     for t in node.targets if isinstance(t, ast.Name) and t.id.startswith("EXIT_"))
    literal = sorted(f"{name}:{node.lineno}" for name, tree in MODULES.items() for node in ast.walk(tree)
                     if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
                     in ("exit", "SystemExit") and node.args and isinstance(node.args[0], ast.Constant)
                     and node.args[0].value not in (0, None))
    assert defined == [] and literal == []

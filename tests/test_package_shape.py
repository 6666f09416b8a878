"""The package stays a house with every room where its name says: small modules and functions, a registry and a
store that deal in files and records only (no model code, not even a lazy import), and no import cycles."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 300, 60
LONG_REASON = re.compile(r"^\s*# Long: \S")  # a function over the limit says why, before its first statement


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def imported(path: Path) -> set[str]:
    """Every ``pipeline...`` (or third-party top-level) module ``path`` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # ``from pipeline.x import y``
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_is_over_300_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_is_over_60_lines_without_a_reason_at_its_top():
    unexplained = []
    for path in modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if node.end_lineno - node.lineno + 1 <= MAX_FUNCTION_LINES:
                continue
            body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
            head = lines[node.lineno - 1: body[0].lineno - 1]  # the signature, the docstring, comments before code
            if not any(LONG_REASON.match(line) for line in head):
                unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert unexplained == []


@pytest.mark.parametrize("package", ["registry", "storage", "data"])
def test_the_store_registry_and_data_readers_import_no_model_code_not_even_lazily(package):
    """The layering test imports these and checks ``sys.modules``; this reads every import in their code, so an
    import inside a function (which that test cannot see) fails here."""
    above = ("pipeline.method", "pipeline.sites", "pipeline.jobs", "pipeline.sweeps", "pipeline.tracking",
             "pipeline.cli", "pipeline.demo", "torch", "ray", "mlflow")
    bad = {f"{p.relative_to(PACKAGE.parent)}: {name}" for p in (PACKAGE / package).rglob("*.py")
           for name in imported(p) if name.split(".")[0] in ("torch", "ray", "mlflow")
           or any(name == a or name.startswith(a + ".") for a in above)}
    assert bad == set()


def test_the_registry_modules_import_one_another_without_a_cycle():
    names = {module_name(p): p for p in (PACKAGE / "registry").glob("*.py")}
    graph = {m: {n for n in names if n != m and n != "pipeline.registry"
                 and any(i == n or i.startswith(n + ".") for i in imported(p))} for m, p in names.items()}
    seen, path = set(), []

    def visit(module: str) -> None:
        assert module not in path, " -> ".join([*path[path.index(module):], module])
        if module in seen:
            return
        path.append(module)
        for other in sorted(graph[module]):
            visit(other)
        path.pop()
        seen.add(module)

    for module in sorted(graph):
        visit(module)

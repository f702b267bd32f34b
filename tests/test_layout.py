"""The tree reads as the design does: imports go one way (cli -> process packages ->
runtime -> protocol), no import circle, no module too long to read without a reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOPS = {"protocol": "shoal.protocol", "services": "shoal.services", "tui": "shoal.tui",
        "firmware": "shoal.firmware", "bench": "shoal.bench"}  # fmt: skip
MAX_LINES = 600
LONG_REASON = "Long on purpose:"  # a module over MAX_LINES says why at its top


def _modules() -> dict[str, Path]:
    found = {}
    for top, package in TOPS.items():
        for path in (ROOT / top).rglob("*.py"):
            parts = list(path.relative_to(ROOT / top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> set[str]:
    """The shoal modules ``name`` imports, at any depth (in functions too), except those
    under ``if TYPE_CHECKING``."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    src = ".".join(base + ([child.module] if child.module else []))
                else:
                    src = child.module or ""
                for alias in child.names:  # `from pkg import module` imports the module
                    sub = f"{src}.{alias.name}"
                    out.add(sub if sub in MODULES else src)
            visit(child)

    visit(ast.parse(path.read_text()))
    # A module's own packages run before it anyway: an edge to them is no circle.
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {m for m in out if m in MODULES and m != name and m not in ancestors}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _package_of(module: str) -> str:
    """The unit the layering rules speak of: shoal.services.X for the services, else the top."""
    parts = module.split(".")
    return ".".join(parts[:3])


def test_no_module_is_part_of_an_import_circle() -> None:
    # Tarjan's strongly connected components over the module graph.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                strongconnect(w)
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
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            strongconnect(v)
    assert circles == []


@pytest.mark.parametrize(
    ("lower", "must_not_import"),
    [
        ("shoal.protocol", ("shoal.services", "shoal.tui", "shoal.bench")),
        ("shoal.firmware", ("shoal.services", "shoal.tui", "shoal.bench", "shoal.protocol")),
        ("shoal.services.runtime", ("shoal.services.", "shoal.tui", "shoal.bench")),
    ],
)
def test_imports_go_one_way(lower: str, must_not_import: tuple[str, ...]) -> None:
    wrong = []
    for module, imported in GRAPH.items():
        if not module.startswith(lower):
            continue
        for target in imported:
            if target.startswith(lower):
                continue
            if any(target.startswith(p) for p in must_not_import):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_only_the_cli_and_the_console_import_the_cli() -> None:
    wrong = [
        f"{m} -> {t}"
        for m, targets in GRAPH.items()
        for t in targets
        if t.startswith("shoal.services.cli") and not m.startswith("shoal.services.cli")
    ]
    assert wrong == []


def test_every_module_is_short_enough_to_read_or_says_why() -> None:
    long = []
    for name, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") > MAX_LINES and LONG_REASON not in text[:3000]:
            long.append(f"{name}: {text.count(chr(10))} lines")
    assert long == []


def test_every_process_package_says_what_it_binds_and_trusts() -> None:
    packages = [p for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()]
    assert len(packages) >= 7
    silent = []
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
        ok = bool(doc) if package.name in ("runtime", "cli") else "bind" in doc and "trust" in doc
        if not ok:
            silent.append(package.name)
    assert silent == []

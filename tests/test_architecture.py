"""The architecture, checked: no import cycles, layers that import only downwards, SQL
and the database drivers only under ``ublox_sim/store/``.

Read from the source with ``ast`` and plain text (nothing is imported or run), so a
violation fails here before anyone has to find it in a review.

Which imports count: every one, wherever it stands: at the top of a module, inside a
function (a deferred import), and under ``if TYPE_CHECKING:``. A dependency is a
dependency whether it runs at import time, on the first call or only for the type
checker; deferring an import or hiding it behind ``TYPE_CHECKING`` is exactly how a
cycle survives unnoticed (the one issue #12 named, actors/messages <-> actors/player,
was a TYPE_CHECKING import). The lazy ``import_module`` of ``ublox_sim/__init__.py`` is
not seen here, but the same names are imported under its ``TYPE_CHECKING``, so its
edges are. Importing ``a.b.c`` also runs the packages ``a`` and ``a.b``: those implicit
edges to a package's ``__init__`` are not counted (its own imports are, as a module's).
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Found, not imported: a violation that breaks importing the package (a cycle at import
# time) must still be reported here, by name, rather than as a collection error.
_SPEC = importlib.util.find_spec("ublox_sim")
assert _SPEC is not None and _SPEC.origin is not None
PACKAGE_DIR = Path(_SPEC.origin).parent

# ---------------------------------------------------------------------------------------
# Known violations, each to be removed, never added to. An entry that no longer matches a
# real violation fails the test below, so a stale one cannot linger: whoever removes the
# violation empties its entry.
# ---------------------------------------------------------------------------------------

# Cycles, as the set of modules in each.
PENDING_REDESIGN_CYCLES: set[frozenset[str]] = set()

# Layering, as (importer, imported) modules.
PENDING_REDESIGN_LAYERING: set[tuple[str, str]] = set()

# Files outside ublox_sim/store/ that still hold SQL.
PENDING_REDESIGN_SQL: set[str] = set()

# Files outside ublox_sim/store/ that still import sqlite3, aiosqlite or asyncpg.
PENDING_REDESIGN_DRIVERS: set[str] = set()

# ---------------------------------------------------------------------------------------
# The rules.
# ---------------------------------------------------------------------------------------

# A module under the first prefix may import nothing under any of the others. Prefixes are
# relative to the package; "" alone is the package's face, ublox_sim/__init__.py (it
# re-exports everything, so importing it from below is importing from above).
LAYERS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "core",
        ("actors", "store", "sim", "server", "engine", "cli", ""),
        "core is the domain: it knows no actor, no storage, no driver of it",
    ),
    (
        "actors",
        ("store.sqlite", "sim", "server", "engine", "cli", ""),
        "actors decide with core's rules and return events; SQL is the store's",
    ),
    (
        "store",
        ("actors", "sim", "server", "engine", "cli", ""),
        "the store persists what it is given; it calls nobody above it",
    ),
    (
        "engine",
        ("sim", "server", "cli", ""),
        "the engine is embedded by the layers above it, never the reverse",
    ),
    (
        "sim",
        ("server", "cli", ""),
        "scenario runs drive the engine; the server and the command line drive them",
    ),
)

# The folders (relative to the package) where SQL and drivers live: the store, and the
# benchmarks, whose baselines are raw SQL on the store's schema by design (raw
# executemany against the store's writer: bench/persistence.py, scale.py).
SQL_HOMES = ("store", "bench")
DRIVERS = ("sqlite3", "aiosqlite", "asyncpg")
# How SQL is written here: upper case, so a sentence in prose does not match.
SQL = {
    "INSERT INTO": re.compile(r"\bINSERT INTO\b"),
    "UPDATE ... SET": re.compile(r"\bUPDATE\s+\w+\s+SET\b"),
    # Across lines: a query is often one string split over several.
    "SELECT ... FROM": re.compile(r"\bSELECT\b[\s\S]{0,400}?\bFROM\b"),
    "CREATE TABLE": re.compile(r"\bCREATE TABLE\b"),
    "DELETE FROM": re.compile(r"\bDELETE FROM\b"),
}


# ---------------------------------------------------------------------------------------
# Reading the source.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Import:
    importer: str  # module name
    imported: str  # module name (an outside one as written: "sqlite3", "numpy.typing")
    file: str  # the importer's path, relative to the package's parent
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.importer} imports {self.imported}"


def modules(package_dir: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(package_dir: Path) -> list[Import]:
    """Every import statement of every module, resolved to the module it names."""
    known = modules(package_dir)
    result: list[Import] = []
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        file = path.relative_to(package_dir.parent).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in dict.fromkeys(_targets(node, name, is_package, known)):
                    result.append(Import(name, target, file, node.lineno))
    return result


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: dict[str, Path]
) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    source = node.module or ""
    if node.level:
        # "from . import x" in a package's __init__ is relative to the package itself.
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, source] if source else base)
    for alias in node.names:
        # "from pkg import sub" imports the module pkg.sub when there is one.
        sub = f"{source}.{alias.name}"
        yield sub if sub in known else source


def inside(module: str, prefix: str, package: str) -> bool:
    """Is ``module`` the package-relative ``prefix`` or below it ("" is the face alone)?"""
    full = f"{package}.{prefix}" if prefix else package
    return module == full or (bool(prefix) and module.startswith(full + "."))


def cycles(edges: Iterable[Import]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan), or self-imports."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layering_violations(edges: Iterable[Import], package: str) -> list[tuple[Import, str]]:
    found = []
    for edge in edges:
        for layer, forbidden, why in LAYERS:
            if inside(edge.importer, layer, package) and any(
                inside(edge.imported, other, package) for other in forbidden
            ):
                found.append((edge, why))
    return found


def sql_outside_store(package_dir: Path) -> list[tuple[str, int, str]]:
    """(file, line, kind) of every SQL statement written outside the store folder."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        if any(path.is_relative_to(package_dir / home) for home in SQL_HOMES):
            continue
        text = path.read_text(encoding="utf-8")
        file = path.relative_to(package_dir.parent).as_posix()
        for kind, pattern in SQL.items():
            for match in pattern.finditer(text):
                found.append((file, text.count("\n", 0, match.start()) + 1, kind))
    return found


def drivers_outside_store(edges: Iterable[Import], package: str) -> list[Import]:
    return [
        edge
        for edge in edges
        if not any(inside(edge.importer, home, package) for home in SQL_HOMES)
        and edge.imported.split(".")[0] in DRIVERS
    ]


def _lines(items: Iterable[object]) -> str:
    return "\n  ".join(str(item) for item in items)


# ---------------------------------------------------------------------------------------
# The tests on ublox_sim.
# ---------------------------------------------------------------------------------------

PACKAGE = PACKAGE_DIR.name
EDGES = [e for e in imports(PACKAGE_DIR) if e.imported.split(".")[0] == PACKAGE]


def test_the_import_graph_is_read_whole() -> None:
    # A reader that missed relative imports would pass every check below vacuously.
    names = modules(PACKAGE_DIR)
    assert {"ublox_sim.engine", "ublox_sim.store.local", "ublox_sim.core.records"} <= set(names)
    assert any(
        e.importer == "ublox_sim.store.local" and e.imported == "ublox_sim.store.backup"
        for e in EDGES
    ), "from . import backup in store/local.py must resolve to the module store.backup"
    assert all(e.imported in names for e in EDGES), "an import names no module of the package"


def test_no_module_imports_itself_back_through_others() -> None:
    found = set(cycles(EDGES))
    new = found - PENDING_REDESIGN_CYCLES
    assert not new, "import cycles:\n  " + _lines(
        "a cycle among "
        + ", ".join(sorted(c))
        + ", through:\n    "
        + "\n    ".join(str(e) for e in EDGES if e.importer in c and e.imported in c)
        for c in new
    )
    stale = PENDING_REDESIGN_CYCLES - found
    assert not stale, f"no longer a cycle: remove from PENDING_REDESIGN_CYCLES: {stale}"


def test_layers_import_only_downwards() -> None:
    found = layering_violations(EDGES, PACKAGE)
    new = [
        (e, why) for e, why in found if (e.importer, e.imported) not in PENDING_REDESIGN_LAYERING
    ]
    assert not new, "imports against the layering:\n  " + _lines(f"{e}  ({why})" for e, why in new)
    stale = PENDING_REDESIGN_LAYERING - {(e.importer, e.imported) for e, _ in found}
    assert not stale, f"no longer imported: remove from PENDING_REDESIGN_LAYERING: {stale}"


def test_sql_is_written_only_under_store() -> None:
    found = sql_outside_store(PACKAGE_DIR)
    new = [f for f in found if f[0] not in PENDING_REDESIGN_SQL]
    assert not new, "SQL outside ublox_sim/store/:\n  " + _lines(
        f"{file}:{line}: {kind}" for file, line, kind in new
    )
    stale = PENDING_REDESIGN_SQL - {file for file, _, _ in found}
    assert not stale, f"no SQL left: remove from PENDING_REDESIGN_SQL: {stale}"


def test_only_the_store_imports_a_database_driver() -> None:
    found = drivers_outside_store(imports(PACKAGE_DIR), PACKAGE)
    new = [e for e in found if e.file not in PENDING_REDESIGN_DRIVERS]
    assert not new, "a database driver imported outside ublox_sim/store/:\n  " + _lines(new)
    stale = PENDING_REDESIGN_DRIVERS - {e.file for e in found}
    assert not stale, f"no driver left: remove from PENDING_REDESIGN_DRIVERS: {stale}"


# ---------------------------------------------------------------------------------------
# The checks can fail: each finds what is planted in a small package of its own.
# ---------------------------------------------------------------------------------------


def _plant(root: Path, files: dict[str, str]) -> Path:
    package_dir = root / "pkg"
    for name, text in files.items():
        path = package_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in {package_dir, *(p.parent for p in package_dir.rglob("*.py"))}:
        (folder / "__init__.py").touch()
    return package_dir


def test_the_checks_find_planted_violations(tmp_path: Path) -> None:
    package_dir = _plant(
        tmp_path,
        {
            "core/money.py": "from ..store.sqlite import writer\n",
            "core/a.py": "if TYPE_CHECKING:\n    from .b import B\n",
            "core/b.py": "def f():\n    from . import a\n",
            "actors/player.py": "from ..store import cdt\nfrom ..store.sqlite.rows import x\n",
            "store/cdt.py": "import sqlite3\nQ = 'SELECT * FROM t'\n",
            "store/sqlite/writer.py": "import aiosqlite\nfrom ...actors.runtime import Reply\n",
            "sim/runner.py": (
                "import sqlite3\n"
                "Q = ('SELECT tick,'\n     ' seed FROM runs')\n"
                "U = 'UPDATE runs SET tick = 1'\n"
                "# Select the rows from the store: prose, not SQL\n"
            ),
            "server/app.py": "from aiosqlite.core import Connection\n",
        },
    )
    edges = imports(package_dir)
    inner = [e for e in edges if e.imported.split(".")[0] == "pkg"]

    assert cycles(inner) == [frozenset({"pkg.core.a", "pkg.core.b"})]
    assert sorted((e.importer, e.imported) for e, _ in layering_violations(inner, "pkg")) == [
        ("pkg.actors.player", "pkg.store.sqlite.rows"),
        ("pkg.core.money", "pkg.store.sqlite.writer"),
        ("pkg.store.sqlite.writer", "pkg.actors.runtime"),
    ]
    assert sql_outside_store(package_dir) == [
        ("pkg/sim/runner.py", 4, "UPDATE ... SET"),
        ("pkg/sim/runner.py", 2, "SELECT ... FROM"),
    ]
    assert sorted(e.file for e in drivers_outside_store(edges, "pkg")) == [
        "pkg/server/app.py",
        "pkg/sim/runner.py",
    ]

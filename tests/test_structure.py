"""The package's shape, read with ``ast`` from every module of rvq_cli/ (nothing is imported):

1. no module imports a private name (one leading underscore, not a dunder) from another rvq_cli
   module, anywhere in the file (module level, inside functions, under ``if TYPE_CHECKING``);
2. no import cycles among rvq_cli modules;
3. every file is at most MAX_FILE_LINES lines;
4. every function and method is at most MAX_FUNCTION_LINES lines (``def`` to its last line,
   docstring included; a nested function counts in its own right and inside its parent).

The import graph (2) has an edge A -> B for every import statement of A that runs, at module level
or inside a function (a function-level import is still a dependency: it only moves the cycle to
call time):

- ``import rvq_cli.x.y`` and ``from rvq_cli.x import y`` / ``from . import y`` where ``y`` is a
  submodule point to that submodule, rvq_cli/x/y.py;
- ``from .pkg import name`` where ``name`` is not a submodule points to the module that defines it
  as far as the import says: pkg/__init__.py (for a package) or pkg.py;
- importing a submodule does not add an edge to its parent package's __init__.py, although Python
  runs that __init__ first. With that implicit edge every package whose __init__ re-exports its
  submodules (``from .trainer import train``) would be a cycle by itself, which says nothing; a
  submodule that *explicitly* imports a name from its own package's __init__ (``from . import
  helper`` where helper is not a submodule) while that __init__ imports the submodule is a real
  cycle, and is reported;
- imports under ``if TYPE_CHECKING:`` never run and add no edge (they are how a type-only
  dependency is kept out of the graph), but they are checked for private names (1).

On a failure the message lists every offender: module and name, line counts, or the modules of
each cycle with the import lines that close it.
"""

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = "rvq_cli"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the rvq_cli module the statement reads from (after resolving submodules)
    names: tuple[str, ...]  # for ``from X import a, b``: a, b; empty for ``import X``
    type_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name: rvq_cli.training)."""
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "__pycache__" not in p.parts}


@cache
def tree(name: str) -> ast.Module:
    path = modules()[name]
    return ast.parse(path.read_text(), filename=str(path))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_nodes(node: ast.AST, type_only: bool = False):
    """(Import | ImportFrom node, under TYPE_CHECKING?) for every import anywhere below ``node``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, type_only
        elif isinstance(child, ast.If) and is_type_checking(child.test):
            for stmt in child.body:
                yield from import_nodes(ast.Module(body=[stmt], type_ignores=[]), True)
            for stmt in child.orelse:
                yield from import_nodes(ast.Module(body=[stmt], type_ignores=[]), type_only)
        else:
            yield from import_nodes(child, type_only)


def resolve_base(name: str, node: ast.ImportFrom) -> str | None:
    """The absolute module ``from <base> import ...`` reads from, or None outside the package."""
    if node.level == 0:
        base = node.module or ""
    else:
        is_package = modules()[name].name == "__init__.py"
        parts = name.split(".") if is_package else name.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    return base if base == PACKAGE or base.startswith(PACKAGE + ".") else None


def imports_of(name: str) -> list[Import]:
    out = []
    known = modules()
    for node, type_only in import_nodes(tree(name)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    out.append(Import(name, node.lineno, alias.name, (), type_only))
            continue
        base = resolve_base(name, node)
        if base is None:
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in known:  # a submodule
                out.append(Import(name, node.lineno, sub, (), type_only))
            else:
                out.append(Import(name, node.lineno, base, (alias.name,), type_only))
    return out


@cache
def all_imports() -> list[Import]:
    return [imp for name in modules() for imp in imports_of(name)]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself), by Tarjan."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:  # recursion depth ≤ number of modules (~70)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_package_is_found():
    names = set(modules())
    assert {PACKAGE, f"{PACKAGE}.cli", f"{PACKAGE}.training", f"{PACKAGE}.quantize"} <= names
    assert len(names) > 20
    assert any(imp.target == f"{PACKAGE}.quantize" for imp in all_imports())  # the resolver sees imports


def test_resolver_and_cycle_finder_on_known_cases():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert cycles(edges) == [["a", "b", "c"], ["d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    node = ast.parse("from ..quantize import _x, VectorQuantizer").body[0]
    assert resolve_base(f"{PACKAGE}.training.trainer", node) == f"{PACKAGE}.quantize"
    assert resolve_base(f"{PACKAGE}.training", ast.parse("from . import trainer").body[0]) == f"{PACKAGE}.training"
    assert resolve_base(f"{PACKAGE}.cli", ast.parse("from torch import nn").body[0]) is None
    assert is_private("_loader") and not is_private("__version__") and not is_private("loader")


def test_no_module_imports_a_private_name_of_another():
    offenders = [f"{imp.module}:{imp.line} imports {name} from {imp.target}"
                 for imp in all_imports() for name in imp.names if is_private(name) and imp.target != imp.module]
    assert not offenders, f"{len(offenders)} private cross-module import(s):\n" + "\n".join(offenders)


def test_no_import_cycles():
    edges: dict[str, set[str]] = {name: set() for name in modules()}
    lines: dict[tuple[str, str], list[int]] = {}
    for imp in all_imports():
        if not imp.type_only:
            edges[imp.module].add(imp.target)
            lines.setdefault((imp.module, imp.target), []).append(imp.line)
    found = cycles(edges)
    report = []
    for component in found:
        inside = [f"    {a}:{','.join(map(str, lines[a, b]))} -> {b}"
                  for a in component for b in sorted(edges[a]) if b in component]
        report.append(f"cycle of {len(component)}: {', '.join(component)}\n" + "\n".join(inside))
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(report)


def test_every_file_is_at_most_500_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    offenders = [f"{modules()[name].relative_to(ROOT.parent)} ({name}): {n} lines"
                 for name, n in sorted(sizes.items(), key=lambda kv: -kv[1]) if n > MAX_FILE_LINES]
    assert not offenders, f"{len(offenders)} file(s) over {MAX_FILE_LINES} lines:\n" + "\n".join(offenders)


def functions(node: ast.AST, prefix: str = ""):
    """(qualified name, def line, line count) of every function and method below ``node``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            qual = f"{prefix}{child.name}"
            yield qual, child.lineno, child.end_lineno - child.lineno + 1
            yield from functions(child, f"{qual}.<locals>.")
        elif isinstance(child, ast.ClassDef):
            yield from functions(child, f"{prefix}{child.name}.")
        else:
            yield from functions(child, prefix)


def test_every_function_is_at_most_80_lines():
    offenders = [f"{name}.{qual} (line {line}): {n} lines"
                 for name in modules() for qual, line, n in functions(tree(name)) if n > MAX_FUNCTION_LINES]
    assert not offenders, f"{len(offenders)} function(s) over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


def test_function_lengths_are_measured_def_to_last_line():
    source = ("class A:\n    def f(self):\n        x = 1\n\n        return x\n\n\n"
              "def g():\n    def h():\n        pass\n    return h\n")
    assert sorted(functions(ast.parse(source))) == [("A.f", 2, 4), ("g", 8, 4), ("g.<locals>.h", 9, 2)]

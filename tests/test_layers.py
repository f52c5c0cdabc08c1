"""The layers the folders promise, checked on the code's own imports.

Data flows down, never up: the C boundary, then the log, the protocol's
rules, the stores and the operator tools (``unbroken_engine``); the HTTP
server above them (``unbroken_server``), the OnePipe application layer above
the server, the benchmarks above that, and the ``unbroken`` command on top.
This test reads every product module's imports (module level and inside
functions alike; ``if TYPE_CHECKING:`` blocks, which only name types, are
left out), and fails on an import of a higher layer, on an import cycle,
and on a private name (``_x``) imported from another module.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"unbroken_engine": ROOT / "unbroken_engine", "unbroken_server": ROOT / "server",
            "unbroken_benches": ROOT / "benches"}

#: (module prefix, layer): a module is in the layer of its longest matching
#: prefix, and may import only modules of its own layer or below.
LAYERS = [
    ("unbroken_engine._native", 0), ("unbroken_engine._cext", 0),
    ("unbroken_engine.errors", 0), ("unbroken_engine._testhooks", 0),
    ("unbroken_engine.log", 1),
    ("unbroken_engine.protocol", 2),
    ("unbroken_engine.stores", 3),
    ("unbroken_engine.tools", 4),
    ("unbroken_engine", 5),  # the package's own facade (__init__)
    ("unbroken_server", 10),
    ("unbroken_server.onepipe", 11),
    ("unbroken_benches", 20),
    ("unbroken_server.operator", 30), ("unbroken_server.cli", 30),
    ("unbroken_server.__main__", 30),
]

#: Kept on purpose, with the reason: the first import path of the OnePipe
#: builders re-exports the layer that moved above the server (lazily: the
#: engine itself never imports it).
SHIMS = {"unbroken_engine.onepipe", "unbroken_engine.onepipe.sync"}


def layer(module: str) -> int:
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return dict(LAYERS)[best]


def modules() -> dict[str, Path]:
    found = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if "node_modules" in path.parts:
                continue
            rel = path.relative_to(folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            found[".".join((pkg, *rel))] = path
    found["unbroken_engine._cext"] = None  # compiled from cext/ by cffi: imports nothing
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str, path: Path, known: set[str]):
    """``(imported module, name or None, line)`` for each import of ``module``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # "from pkg import module"
                    yield sub, None, node.lineno
                else:
                    yield base, alias.name, node.lineno


def internal(name: str, known: set[str]) -> str | None:
    """The known module an import resolves to (the longest known prefix)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def graph():
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    found = []
    for module, path in mods.items():
        if path is None:
            continue
        for target, name, line in imports(module, path, known):
            dep = internal(target, known)
            if dep is None or dep == module:
                continue
            edges[module].add(dep)
            found.append((module, dep, name, path.relative_to(ROOT), line))
    return edges, found


def test_no_module_imports_a_layer_above_its_own():
    _, found = graph()
    upward = [f"{path}:{line}: {m} (layer {layer(m)}) imports {dep} (layer {layer(dep)})"
              for m, dep, _, path, line in found
              if m not in SHIMS and layer(dep) > layer(m)]
    assert not upward, "imports that go up:\n" + "\n".join(upward)


def test_there_is_no_import_cycle():
    edges, _ = graph()
    edges = {m: {d for d in deps if d not in SHIMS} for m, deps in edges.items() if m not in SHIMS}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    # a package's __init__ importing its own submodules is not a cycle of design
    cycles = [c for c in cycles if not all(
        any(o.startswith(m + ".") for o in c) or any(m.startswith(o + ".") for o in c)
        for m in c)]
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_private_name_is_imported_from_another_module():
    _, found = graph()
    private = [f"{path}:{line}: {m} imports {name} from {dep}"
               for m, dep, name, path, line in found
               if name is not None and name.startswith("_") and not name.startswith("__")]
    assert not private, "private names used across modules:\n" + "\n".join(private)


def test_the_check_sees_an_upward_import(tmp_path):
    """The walker is not vacuous: it finds the imports of a known module."""
    _, found = graph()
    assert any(m == "unbroken_server.handlers" and dep.startswith("unbroken_engine.stores")
               for m, dep, *_ in found)
    assert layer("unbroken_engine.stores.base") > layer("unbroken_engine.log.segmented")
    assert layer("unbroken_server.onepipe.runtime") > layer("unbroken_server.app")

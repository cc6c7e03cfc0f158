"""stacko's modules form floors: each imports only from its own floor or the
floors below, lazy imports inside functions included, and no import circle
closes anywhere.

The graph is read from the source (the AST), not from what one run happens to
import: ``import stacko.x``, ``from stacko import x``, ``from stacko.x import
y`` and relative imports, at module level, inside functions and under ``if
TYPE_CHECKING:`` alike.  A new module needs a line in FLOORS below; the
README's module map says what each floor is for.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

STACKO = Path(__file__).resolve().parent.parent / "stacko"
HERE = "FLOORS in tests/test_floors.py"

PRIMITIVES, FILES, MACHINERY, NOUNS, COMMANDS, CLI = range(6)
FLOOR_NAMES = {
    PRIMITIVES: "primitives",
    FILES: "the files under the root",
    MACHINERY: "mount machinery and process supervision",
    NOUNS: "the nouns",
    COMMANDS: "the commands",
    CLI: "the command line",
}

FLOORS = {
    # Primitives: what any module may use.  Errors, records, messages, the
    # stand-ins for costly standard modules, durable writes, running a command.
    "stacko": PRIMITIVES,
    "stacko.errors": PRIMITIVES,
    "stacko.names": PRIMITIVES,
    "stacko.records": PRIMITIVES,
    "stacko.words": PRIMITIVES,
    "stacko.lean": PRIMITIVES,
    "stacko.log": PRIMITIVES,
    "stacko.durable": PRIMITIVES,
    "stacko.run": PRIMITIVES,
    "stacko.validate": PRIMITIVES,
    "stacko.quoting": PRIMITIVES,
    "stacko.moved": PRIMITIVES,
    "stacko.suggest": PRIMITIVES,
    "stacko.table": PRIMITIVES,
    "stacko.exitstatus": PRIMITIVES,
    "stacko.examples": PRIMITIVES,
    "stacko.formats": PRIMITIVES,
    "stacko.formats.spellings": PRIMITIVES,
    "stacko.formats.compression": PRIMITIVES,
    "stacko.formats.ocimanifest": PRIMITIVES,
    "stacko.parallel": PRIMITIVES,
    "stacko.shortpaths": PRIMITIVES,
    "stacko.formats.runsettings": PRIMITIVES,
    "stacko.formats.treewalk": PRIMITIVES,
    "stacko.registry": PRIMITIVES,
    "stacko.registry.ref": PRIMITIVES,
    "stacko.signing": PRIMITIVES,
    # The files under the root: paths, metadata, the lock, content manifests.
    # They know nothing of mounts or processes.
    "stacko.state": FILES,
    "stacko.rootlock": FILES,
    "stacko.content": FILES,
    "stacko.spare": FILES,
    # The kernel's mounts and the processes stacko watches.
    "stacko.mounttable": MACHINERY,
    "stacko.mountapi": MACHINERY,
    "stacko.overlay": MACHINERY,
    "stacko.procs": MACHINERY,
    "stacko.cgroups": MACHINERY,
    "stacko.events": MACHINERY,
    "stacko.supervise": MACHINERY,
    # The nouns: layers, images, stackpoints, staging, archive formats, a registry.
    "stacko.layers": NOUNS,
    "stacko.images": NOUNS,
    "stacko.stackpoints": NOUNS,
    "stacko.instances": NOUNS,
    "stacko.guard": NOUNS,
    "stacko.switch": NOUNS,
    "stacko.tentative": NOUNS,
    "stacko.pending": NOUNS,
    "stacko.staging": NOUNS,
    "stacko.imageblobs": NOUNS,
    "stacko.formats.layertar": NOUNS,
    "stacko.formats.layerpack": NOUNS,
    "stacko.formats.dirsource": NOUNS,
    "stacko.formats.ocisource": NOUNS,
    "stacko.formats.sourcepath": NOUNS,
    "stacko.formats.ociexport": NOUNS,
    "stacko.registry.client": NOUNS,
    "stacko.registry.auth": NOUNS,
    "stacko.registry.transport": NOUNS,
    "stacko.registry.http1": NOUNS,
    "stacko.registry.wire": NOUNS,
    "stacko.registry.look": NOUNS,
    "stacko.formats.ocicheck": NOUNS,
    "stacko.formats.tarend": NOUNS,
    "stacko.formats.tarfields": NOUNS,
    "stacko.formats.tarstream": NOUNS,
    "stacko.formats.filewriters": NOUNS,
    "stacko.formats.prefetch": PRIMITIVES,
    "stacko.formats.spacebudget": NOUNS,
    "stacko.unpacking": NOUNS,
    # Image signatures (GPG, sigstore): formats, policies and their protocols.
    "stacko.signing.cosignkey": NOUNS,
    "stacko.signing.dockerref": NOUNS,
    "stacko.signing.files": NOUNS,
    "stacko.signing.gpg": NOUNS,
    "stacko.signing.identity": NOUNS,
    "stacko.signing.keygen": NOUNS,
    "stacko.signing.lookaside": NOUNS,
    "stacko.signing.payload": NOUNS,
    "stacko.signing.policy": NOUNS,
    "stacko.signing.policyfile": NOUNS,
    "stacko.signing.pullsign": NOUNS,
    "stacko.signing.publickey": NOUNS,
    "stacko.signing.pushsign": NOUNS,
    "stacko.signing.registriesd": NOUNS,
    "stacko.signing.sigstore": NOUNS,
    # The commands that combine nouns.
    "stacko.checked": COMMANDS,
    "stacko.changes": COMMANDS,
    "stacko.check": COMMANDS,
    "stacko.checkfiles": COMMANDS,
    "stacko.checkmounts": COMMANDS,
    "stacko.df": COMMANDS,
    "stacko.eventsview": COMMANDS,
    "stacko.oci": COMMANDS,
    "stacko.registry.pull": COMMANDS,
    "stacko.registry.push": COMMANDS,
    "stacko.update": COMMANDS,
    # The command line on top.
    "stacko.cli": CLI,
    "stacko.cmdtable": CLI,
    "stacko.quickgrammar": CLI,
    "stacko.handlers": CLI,
    "stacko.parser": CLI,
    "stacko.__main__": CLI,
}


def module_files(top: Path = STACKO) -> dict[str, Path]:
    """Every module of the package: its dotted name and its file."""
    found = {}
    for path in sorted(top.rglob("*.py")):
        parts = list(path.relative_to(top.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(module of stacko imported, line) for every import statement in the file,
    wherever it stands: module level, inside a function, under TYPE_CHECKING."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from stacko import overlay` imports a module; `from stacko.state
            # import Store` a name of one.
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules
                       else source for alias in node.names]
        for target in targets:
            while target and target not in modules:      # stacko.x.y: the module stacko.x
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node.lineno))
    return found


def import_graph() -> dict[str, list[tuple[str, int]]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def where(module: str, line: int) -> str:
    path = module_files()[module]
    return f"{path.relative_to(STACKO.parent)}:{line}"


def test_every_module_has_a_floor() -> None:
    missing = sorted(set(module_files()) - set(FLOORS))
    assert not missing, "\n".join(
        f"module {m} has no floor: add it to {HERE} (the floor of the highest module it "
        "imports, or higher; the README's module map says what each floor is for)"
        for m in missing)


def test_every_floor_names_a_module() -> None:
    gone = sorted(set(FLOORS) - set(module_files()))
    assert not gone, f"no such module (renamed or removed?): remove it from {HERE}: {gone}"


def test_no_module_imports_from_a_floor_above_it() -> None:
    upward = []
    for module, targets in sorted(import_graph().items()):
        for target, line in targets:
            if module in FLOORS and target in FLOORS and FLOORS[target] > FLOORS[module]:
                upward.append(f"{where(module, line)}: {module} ({FLOOR_NAMES[FLOORS[module]]}) "
                              f"imports {target} ({FLOOR_NAMES[FLOORS[target]]}), a floor above it")
    assert not upward, ("upward imports (move what is needed down to the lower floor, "
                        "or the importer up):\n" + "\n".join(upward))


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One circle through each group of modules that import each other (Tarjan's
    strongly connected components, then a path around each)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    circles = []
    for group in groups:        # a shortest way from the group's first module back to it
        start, members = group[0], set(group)
        paths = {start: [start]}
        todo = [start]
        circle = None
        while todo and circle is None:
            v = todo.pop(0)
            for w in sorted(graph.get(v, ())):
                if w == start:
                    circle = paths[v] + [start]
                    break
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    todo.append(w)
        circles.append(circle or group)
    return circles



def test_no_import_circle() -> None:
    graph = {m: sorted({t for t, _ in targets}) for m, targets in import_graph().items()}
    found = cycles(graph)
    assert not found, "import circles, lazy imports included (one way round each):\n" + \
        "\n".join(" -> ".join(circle) for circle in found)


# --- the test can fail -----------------------------------------------------------
def test_lazy_and_relative_imports_are_seen(tmp_path: Path) -> None:
    top = tmp_path / "stacko"
    (top / "sub").mkdir(parents=True)
    for name in ("__init__", "a", "b", "c", "sub/__init__", "sub/d", "sub/e"):
        (top / f"{name}.py").write_text("")
    (top / "a.py").write_text("def f():\n    from stacko import b\n"
                              "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    import stacko.c\n")
    (top / "sub" / "d.py").write_text("from . import e\nfrom ..c import thing\n"
                                      "from stacko.sub.e import name\n")
    files = module_files(top)
    names = set(files)
    assert sorted(t for t, _ in imports_of("stacko.a", files["stacko.a"], names)) == \
        ["stacko.b", "stacko.c"]
    assert sorted(t for t, _ in imports_of("stacko.sub.d", files["stacko.sub.d"], names)) == \
        ["stacko.c", "stacko.sub.e", "stacko.sub.e"]


def test_circles_are_found_and_named() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e2"], "e2": ["e"]}
    assert cycles(graph) == [["a", "b", "c", "a"], ["e", "e2", "e"]]
    assert cycles({"a": ["b"], "b": []}) == []


def test_the_real_graph_has_the_lazy_edges() -> None:
    """overlay imports mountapi only inside the functions that mount, layers
    content only inside remove_layer."""
    graph = import_graph()
    assert "stacko.mountapi" in {t for t, _ in graph["stacko.overlay"]}
    assert "stacko.content" in {t for t, _ in graph["stacko.layers"]}


@pytest.mark.parametrize("floor", sorted(FLOOR_NAMES))
def test_every_floor_is_lived_in(floor: int) -> None:
    assert floor in FLOORS.values()

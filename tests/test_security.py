"""Security: a private root, refusing a root others can write to, --path
refusals, and never a shell."""
from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

from conftest import Runner, snapshot

STACKO = Path(__file__).resolve().parent.parent / "stacko"
IS_ROOT = os.geteuid() == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_root_and_metadata_are_private(stacko: Runner, root: Path) -> None:
    stacko("new-image", "base")
    stacko("new-stackpoint", "sp", "base")
    assert mode(root) == 0o700
    for name in ("images.json", "stackpoints.json", "lock"):
        assert mode(root / name) == 0o600, name
        assert os.stat(root / name).st_uid == os.geteuid()
    assert mode(root / "w") == 0o700
    assert os.stat(root).st_uid == os.geteuid()


def test_umask_does_not_widen_the_metadata(stacko: Runner, root: Path) -> None:
    old = os.umask(0)
    try:
        stacko("new-image", "base")
    finally:
        os.umask(old)
    assert mode(root / "images.json") == 0o600 and mode(root) & 0o022 == 0


@pytest.mark.parametrize("what", ["root", "images.json", "l"])
def test_root_writable_by_others_is_refused(stacko: Runner, root: Path, what: str) -> None:
    stacko("new-image", "base")
    target = root if what == "root" else root / what
    os.chmod(target, mode(target) | 0o022)
    before = snapshot(root)
    for argv in (("new-image", "x"), ("list-images",), ("check",), ("delete-image", "base")):
        r = stacko(*argv, rc=1)
        assert "writable by other users" in r.stderr and "chmod go-w" in r.stderr, r.stderr
    assert snapshot(root) == before


@pytest.mark.skipif(not IS_ROOT, reason="chown needs root")
def test_root_owned_by_another_user_is_refused(stacko: Runner, root: Path) -> None:
    stacko("new-image", "base")
    os.chown(root, 65534, 65534)
    r = stacko("new-image", "x", rc=1)
    assert "belongs to user 65534" in r.stderr


@pytest.mark.mounts
def test_path_refusals(stacko: Runner, root: Path, workdir: Path) -> None:
    stacko("new-image", "base")
    (workdir / "mine" / "inner").mkdir(parents=True)
    stacko("new-stackpoint", "sp", "base", "--path", str(workdir / "mine"))
    (workdir / "into-root").symlink_to(root)
    before = snapshot(root)
    for path in ("/", "/../", str(root), str(root / "l"), str(root / "stackpoints" / "x"),
                 str(workdir / "into-root" / "l"), str(workdir / "mine"),
                 str(workdir / "mine" / "inner"), str(workdir), str(workdir / "mine" / ".."),
                 str(root / "stackpoints" / "sp")):
        r = stacko("new-stackpoint", "other", "base", "--path", path, rc=2)
        assert "stacko: error:" in r.stderr, path
    assert snapshot(root) == before


@pytest.mark.mounts
def test_shell_characters_are_only_characters(stacko: Runner, root: Path, workdir: Path) -> None:
    """Paths reach external commands as single arguments, never through a shell."""
    canary = workdir / "pwned"
    stacko("new-image", "base")
    odd = workdir / f"dir; touch {canary} $(touch {canary}) `touch {canary}`"
    stacko("new-stackpoint", "sp", "base", "--path", str(odd))
    mounted = Path(stacko("mount-stackpoint", "sp").out)
    assert mounted == odd and os.path.ismount(odd)
    stacko("umount-stackpoint", "sp")
    stacko("import-image", "x", f"$(touch {canary})", rc=1)
    stacko("export-image", "base", str(workdir / "out;touch pwned;$(touch pwned).tar"))
    assert (workdir / "out;touch pwned;$(touch pwned).tar").is_file()
    assert not canary.exists() and not Path("pwned").exists()


def calls_in(path: Path):
    """Each call in the file, with the dotted name of the function it is in
    (outer.inner for a function defined inside another)."""
    def walk(node: ast.AST, func: str):
        for child in ast.iter_child_nodes(node):
            inner = (f"{func}.{child.name}" if func else child.name) \
                if isinstance(child, ast.FunctionDef) else func
            if isinstance(child, ast.Call):
                yield func, child
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text(), str(path)), "")


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return dotted(node.value) + "." + node.attr
    if isinstance(node, ast.Name):
        return node.id
    return "?"


# The one shell stacko starts: the contract's `cutover-stackpoint --check CMD`
# runs CMD with `sh -c`, as the admin wrote it.
ALLOWED_SHELLS = {("supervise.py", "run_check")}


def test_no_shell_anywhere() -> None:
    """No shell=True, os.system, os.popen or exec of a shell; only run.py starts
    processes (through subwrap, subprocess, and posix_spawnp for run.spawn), and
    only supervise.run_check (through run.start) starts a shell."""
    for path in sorted(STACKO.rglob("*.py")):
        text = path.read_text()
        for func, call in calls_in(path):
            name = dotted(call.func)
            assert name not in ("os.system", "os.popen", "subprocess.getoutput",
                                "subprocess.getstatusoutput"), f"{path.name}: {name}"
            assert not name.startswith(("os.exec", "os.spawn", "os.posix_spawn")) or \
                (path.name, name) == ("run.py", "os.posix_spawnp"), f"{path.name}: {name}"
            for kw in call.keywords:
                if kw.arg == "shell":
                    assert isinstance(kw.value, ast.Constant) and kw.value.value is False, \
                        f"{path.name}:{call.lineno}: shell="
            for arg in call.args[:1]:
                if isinstance(arg, (ast.List, ast.Tuple)) and arg.elts and \
                        isinstance(arg.elts[0], ast.Constant) and \
                        arg.elts[0].value in ("sh", "bash", "/bin/sh", "/bin/bash") and \
                        (path.name, func.split(".")[0]) not in ALLOWED_SHELLS:
                    raise AssertionError(f"{path.name}:{call.lineno}: runs a shell")
        if path.name != "run.py":
            assert "import subprocess" not in text and "import subwrap" not in text, path.name

"""The promises of the contract that hold for every command: exit statuses,
stdout for data only, names, unknown names, help without root or state."""
from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path
import subprocess
import sys

import pytest

from conftest import run_stacko, snapshot
from stacko import __version__
from stacko.cli import build_parser, main

ALL_COMMANDS = [
    "new-image", "edit-image", "close-image", "delete-image", "list-images", "import-image",
    "export-image", "pull-image", "push-image", "new-stackpoint", "delete-stackpoint",
    "mount-stackpoint",
    "umount-stackpoint", "get-stackpoint-dir", "is-stackpoint-mounted", "cutover-stackpoint",
    "cutover-stackpoint-instance", "fallback-stackpoint", "fallback-stackpoint-instance",
    "new-stackpoint-instance", "set-stackpoint-instance", "delete-stackpoint-instance",
    "list-stackpoints", "diff-stackpoint", "commit-stackpoint", "prune-stackpoint", "check",
    "generate-sigstore-key",
]

# (argv with NAME placeholders) for every command that takes a name.
NAMED = [
    ("new-image", "{}"), ("new-image", "ok", "{}"), ("edit-image", "{}"), ("close-image", "{}"),
    ("delete-image", "{}"), ("export-image", "{}", "/tmp/x.tar"),
    ("new-stackpoint", "{}", "ok"), ("new-stackpoint", "ok", "{}"), ("delete-stackpoint", "{}"),
    ("mount-stackpoint", "{}"), ("umount-stackpoint", "{}"), ("get-stackpoint-dir", "{}"),
    ("is-stackpoint-mounted", "{}"), ("cutover-stackpoint", "{}", "ok"),
    ("cutover-stackpoint", "ok", "{}"), ("fallback-stackpoint", "{}"),
    ("new-stackpoint-instance", "{}", "ok"), ("set-stackpoint-instance", "ok", "{}"),
    ("delete-stackpoint-instance", "{}", "ok"),
]
BAD_NAMES = ["..", "a/b", "", "a b", "x" * 129, "-rf"]


def test_version_and_help_need_no_root_and_no_state(tmp_path, capsys) -> None:
    root = tmp_path / "none"
    assert main(["--root", str(root), "--version"]) == 0
    assert capsys.readouterr().out.strip() == f"stacko {__version__}"
    assert main(["-h"]) == 0
    for command in ALL_COMMANDS:
        assert main([command, "-h"]) == 0, command
    assert not root.exists()


def test_every_contract_command_is_there() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(ALL_COMMANDS) <= set(sub.choices)
    # the help's groups (and the man page's) name each command of the table once
    from stacko import cli
    grouped = (cli.IMAGE_COMMANDS + " " + cli.POINT_COMMANDS + " " + cli.UPKEEP_COMMANDS).split()
    assert sorted(grouped) == sorted(c.name for c in cli.COMMANDS)


def test_usage_errors_exit_2(root) -> None:
    for argv in ([], ["no-such-command"], ["new-image"], ["new-image", "a", "b", "c"],
                 ["list-images", "--bogus"], ["prune-stackpoint", "p", "--keep", "x"]):
        r = run_stacko(root, *argv, rc=2)
        assert r.stdout == ""
        assert "usage:" in r.stderr


@pytest.mark.parametrize("argv", NAMED)
@pytest.mark.parametrize("bad", BAD_NAMES)
def test_invalid_names_exit_2_and_change_nothing(root, argv, bad) -> None:
    run_stacko(root, "new-image", "ok")
    before = snapshot(root)
    args = [a.format(bad) for a in argv]
    if bad == "-rf":
        args.insert(1, "--")       # so argparse sees a name, not an option
    r = run_stacko(root, *args, rc=2)
    assert r.stdout == ""
    assert snapshot(root) == before


@pytest.mark.parametrize("argv", [
    ("edit-image", "nope"), ("close-image", "nope"), ("delete-image", "nope"),
    ("new-image", "child", "nope"), ("new-stackpoint", "p", "nope"),
    ("delete-stackpoint", "nope"), ("mount-stackpoint", "nope"), ("umount-stackpoint", "nope"),
    ("get-stackpoint-dir", "nope"), ("is-stackpoint-mounted", "nope"),
    ("cutover-stackpoint", "nope", "ok"), ("cutover-stackpoint", "p0", "nope"),
    ("fallback-stackpoint", "nope"), ("new-stackpoint-instance", "nope", "ok"),
    ("new-stackpoint-instance", "p0", "nope"), ("set-stackpoint-instance", "p0", "nope"),
    ("set-stackpoint-instance", "nope", "ok"), ("delete-stackpoint-instance", "p0", "nope"),
    ("delete-stackpoint-instance", "nope", "ok"),
])
def test_unknown_names_exit_1_naming_them(root, argv) -> None:
    run_stacko(root, "new-image", "ok")
    run_stacko(root, "new-stackpoint", "p0", "ok")
    before = snapshot(root)
    r = run_stacko(root, *argv, rc=1)
    assert r.stdout == ""
    assert "nope" in r.stderr
    assert snapshot(root) == before


def test_root_from_environment(tmp_path) -> None:
    root = tmp_path / "env root"
    run_stacko(None, "new-image", "a", env={"STACKO_ROOT": str(root)})
    assert (root / "images.json").exists()
    assert run_stacko(None, "--root", str(root), "list-images").out == "a"
    # --root after the command works too, and wins over the environment
    assert run_stacko(None, "list-images", "--root", str(root),
                      env={"STACKO_ROOT": str(tmp_path / "other")}).out == "a"


def test_duplicate_names_are_refused(root) -> None:
    run_stacko(root, "new-image", "a")
    run_stacko(root, "new-stackpoint", "p", "a")
    before = snapshot(root)
    assert "exists" in run_stacko(root, "new-image", "a", rc=1).stderr
    assert "exists" in run_stacko(root, "new-stackpoint", "p", "a", rc=1).stderr
    assert "already" in run_stacko(root, "new-stackpoint-instance", "p", "a", rc=1).stderr
    assert snapshot(root) == before


def test_new_commands_print_nothing_on_stdout(root) -> None:
    for argv in (("new-image", "a"), ("new-image", "b", "a"), ("new-stackpoint", "p", "b"),
                 ("new-stackpoint-instance", "p", "a"), ("set-stackpoint-instance", "p", "a"),
                 ("set-stackpoint-instance", "p", "b"), ("delete-stackpoint-instance", "p", "a")):
        assert run_stacko(root, *argv).stdout == ""


def test_listings_of_an_empty_or_missing_root(root) -> None:
    assert run_stacko(root, "list-images").stdout == ""
    assert run_stacko(root, "list-images", "--json").out == "[]"
    assert run_stacko(root, "list-stackpoints").stdout == ""
    assert run_stacko(root, "list-stackpoints", "--json").out == "[]"
    assert not root.exists()


def test_corrupt_metadata_is_reported_and_kept(root) -> None:
    run_stacko(root, "new-image", "a")
    (root / "images.json").write_text("{not json")
    for argv in (("list-images",), ("new-image", "b"), ("delete-image", "a")):
        r = run_stacko(root, *argv, rc=1)
        assert "images.json" in r.stderr
    assert (root / "images.json").read_text() == "{not json"


def test_the_root_is_private(root) -> None:
    run_stacko(root, "new-image", "a")
    assert os.stat(root).st_mode & 0o777 == 0o700
    assert os.stat(root / "images.json").st_mode & 0o777 == 0o600


def python_for(uid: int) -> str:
    """An interpreter that user can run with this checkout on its path (the venv
    may sit under /root, which other users cannot enter)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run([python, "-c", "import stacko.cli"], user=uid, cwd="/",
                                   env={"PYTHONPATH": repo}, capture_output=True)
        except OSError:
            continue
        if probe.returncode == 0:
            return python
    pytest.skip(f"no interpreter that uid {uid} can run stacko from {repo} with")


@pytest.mark.mounts
def test_a_normal_user_is_told_that_mounting_needs_root(monkeypatch) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    monkeypatch.setattr(sys, "executable", python_for(nobody))
    # pytest's own temporary directories are closed to other users: use /tmp.
    base = tempfile.mkdtemp(prefix="stacko-nonroot-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        root = os.path.join(base, "root")
        run_stacko(root, "new-image", "a")
        run_stacko(root, "new-stackpoint", "p", "a")
        # let the user read the state, as the contract allows
        subprocess.run(["chmod", "-R", "a+rX", root], check=True)
        before = snapshot(Path(root))
        for argv in (("mount-stackpoint", "p"), ("umount-stackpoint", "p"), ("edit-image", "a"),
                     ("close-image", "a"), ("cutover-stackpoint", "p", "a"),
                     ("cutover-stackpoint", "p", "a", "--check", "true"),
                     ("fallback-stackpoint", "p")):
            r = run_stacko(root, *argv, rc=1, user=nobody)
            assert "needs root" in r.stderr, argv
        assert "stacko: error:" in run_stacko(root, "new-image", "b", rc=1, user=nobody).stderr
        assert run_stacko(root, "list-images", user=nobody).out == "a"
        assert run_stacko(root, "list-stackpoints", "--json", user=nobody).out.startswith("[")
        assert snapshot(Path(root)) == before
    finally:
        shutil.rmtree(base)

"""Each command imports only what it uses.

stacko runs from boot scripts and shell prompts, where starting Python and
importing modules is most of a command's time (docs/startup.md).  Each test
runs one command in a fresh interpreter, as the console script does, and
fails when a module on the command's deny list was imported: typing, ctypes
for commands that do not mount, tarfile and hashlib for anything but the
archive commands, ssl and http for everything but the registry commands.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Runner
from stacko import mountapi

REPO = Path(__file__).resolve().parent.parent

# Runs main() as the console script would, then writes what was imported.
PROBE = """
import os, sys
sys.stdout = open(os.devnull, "w")
from stacko.cli import main
status = main(sys.argv[2:])
modules = sorted(sys.modules)     # before the probe's own json
import json
with open(sys.argv[1], "w") as f:
    json.dump({"status": status, "modules": modules}, f)
"""

# Never needed by a command that neither talks to a registry nor reads or
# writes an archive.  typing: stacko annotates with builtin generics and
# collections.abc; dataclasses pulls in inspect; shutil (bz2, lzma) is what
# argparse imports for the terminal width unless told it.
HEAVY = {"typing", "tarfile", "hashlib", "ssl", "http.client", "dataclasses", "inspect",
         "shutil", "bz2", "lzma", "isal", "zstandard", "subprocess", "secrets"}
# ctypes is for the new mount API only.
NO_MOUNT = HEAVY | {"ctypes", "stacko.mountapi"}


def imported(root: Path, *argv: str) -> set[str]:
    """The modules a fresh interpreter has after `stacko --root ROOT argv...`."""
    out = root.parent / "probe.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    subprocess.run([sys.executable, "-c", PROBE, str(out), "--root", str(root), *argv],
                   check=True, env=env, stderr=subprocess.PIPE)
    data = json.loads(out.read_text())
    out.unlink()
    return set(data["modules"])


@pytest.fixture
def state(stacko: Runner, root: Path) -> Path:
    stacko("new-image", "base")
    stacko("new-image", "app", "base")
    stacko("new-stackpoint", "web", "app")
    return root


@pytest.mark.parametrize("argv", [
    ("list-images",), ("list-images", "--json"), ("list-images", "--tree"),
    ("list-stackpoints",), ("list-stackpoints", "--json"),
    ("get-stackpoint-dir", "web"), ("is-stackpoint-mounted", "web"),
    ("--version",), ("list-images", "-h"), ("no-such-command",),
])
def test_listings_and_help_import_nothing_heavy(state: Path, argv: tuple[str, ...]) -> None:
    assert imported(state, *argv) & NO_MOUNT == set()


@pytest.mark.parametrize("argv, needs", [
    (("new-image", "other"), {"hashlib"}),     # an image is sealed with its content's digest
    (("new-stackpoint", "db", "base"), set()), (("check",), set()), (("df",), set()),
    (("diff-stackpoint", "web"), set()), (("prune-stackpoint", "web", "--keep", "1"), set()),
])
def test_commands_that_do_not_mount_import_nothing_heavy(state: Path, argv: tuple[str, ...],
                                                         needs: set[str]) -> None:
    assert imported(state, *argv) & NO_MOUNT == needs


@pytest.mark.mounts
def test_mount_and_umount_import_ctypes_and_nothing_heavy(state: Path) -> None:
    # subprocess only when mount(8) is the way (kernels before the new mount API).
    # The new mount API is called through ctypes' C core, _ctypes: the ctypes
    # package around it costs a mount ~2 ms (see stacko/mountapi.py).
    for argv in (("mount-stackpoint", "web"), ("umount-stackpoint", "web")):
        assert imported(state, *argv) & (HEAVY - {"subprocess"} | {"ctypes"}) == set(), argv


def test_the_probe_sees_imports(state: Path, workdir: Path) -> None:
    """The test above can fail: export-image does import tarfile and hashlib."""
    modules = imported(state, "export-image", "base", str(workdir / "out.tar"))
    assert {"tarfile", "hashlib", "isal"} <= modules


# The commands run most often parse their line without argparse (cli.quick_args)
# and read the metadata without json: together with re and enum, which both
# import, and signal's enums, these are ~10 ms of a start of ~20 (docs/startup.md).
LEAN = NO_MOUNT | {"argparse", "re", "json", "enum", "signal", "gettext", "locale", "shlex",
                   "stacko.run", "stacko.procs", "collections.abc"}


@pytest.mark.parametrize("argv, needs", [
    (("list-images",), set()), (("list-images", "--tree"), set()),
    (("list-images", "--json"), {"json", "re", "enum"}),      # json writes it
    (("list-stackpoints",), set()), (("list-stackpoints", "--json"), {"json", "re", "enum"}),
    (("get-stackpoint-dir", "web"), set()), (("is-stackpoint-mounted", "web"), set()),
    (("-v", "get-stackpoint-dir", "web"), {"stacko.run"}),     # shlex only to run a command
])
def test_the_hot_commands_start_lean(state: Path, argv: tuple[str, ...], needs: set[str]) -> None:
    assert imported(state, *argv) & LEAN == needs


@pytest.mark.mounts
def test_mount_and_umount_start_lean(state: Path) -> None:
    lean = {"argparse", "json", "gettext"}
    if mountapi.supports_new_api():
        # Nothing but the system calls.  mount(8), where it is the way, is a
        # command: run imports shlex and subprocess for it, which import re,
        # signal and locale.
        lean |= {"locale", "signal", "re", "enum", "shlex", "collections.abc", "ctypes",
                 "collections", "functools", "contextlib"}
    for argv in (("mount-stackpoint", "web"), ("umount-stackpoint", "web")):
        assert imported(state, *argv) & lean == set(), argv


def test_the_probe_sees_argparse(state: Path) -> None:
    """The tests above can fail: a line the quick parse declines uses argparse."""
    assert {"argparse", "re"} <= imported(state, "list-images", "--js")

"""What an adversarial review broke (issue 9), one test (or a few) per defect:
each failed before its fix."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Runner, populate, snapshot


def mounts_at(path: Path) -> int:
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split(" ")[4] == str(path))


# --- 1: a symlink in a stackpoint's path ---------------------------------------------
@pytest.mark.mounts
def test_a_symlink_in_the_path_never_loses_the_mount(stacko: Runner, root: Path,
                                                     workdir: Path) -> None:
    populate(stacko, "base", {"f": "base\n"})
    (workdir / "p" / "data").mkdir(parents=True)
    stacko("new-stackpoint", "sp", "base", "--path", str(workdir / "p" / "data"))
    d = Path(stacko("mount-stackpoint", "sp").out)
    (d / "mine").write_text("precious\n")
    os.rename(workdir / "p", workdir / "moved")            # mv p moved; ln -s moved p
    (workdir / "p").symlink_to("moved")
    real = workdir / "moved" / "data"
    # The kernel reports the mount at the resolved path: it is mounted.
    stacko("is-stackpoint-mounted", "sp", rc=0)
    before = snapshot(root)
    for argv in (("mount-stackpoint", "sp"), ("umount-stackpoint", "sp")):
        r = stacko(*argv, rc=1)
        assert str(d) in r.stderr and str(real) in r.stderr, r.stderr
    r = stacko("delete-stackpoint", "sp", rc=1)
    assert snapshot(root) == before
    assert mounts_at(real) == 1
    assert (real / "mine").read_text() == "precious\n"


@pytest.mark.mounts
def test_an_instance_mounted_elsewhere_is_never_mounted_again_nor_deleted(
        stacko: Runner, root: Path, workdir: Path) -> None:
    populate(stacko, "base", {"f": "base\n"})
    (workdir / "p" / "data").mkdir(parents=True)
    stacko("new-stackpoint", "sp", "base", "--path", str(workdir / "p" / "data"))
    stacko("mount-stackpoint", "sp")
    os.rename(workdir / "p", workdir / "moved")             # no symlink left behind
    real = workdir / "moved" / "data"
    (real / "mine").write_text("precious\n")
    before = snapshot(root)
    r = stacko("mount-stackpoint", "sp", rc=1)
    assert str(real) in r.stderr, r.stderr
    r = stacko("delete-stackpoint", "sp", rc=1)
    assert str(real) in r.stderr, r.stderr
    assert snapshot(root) == before
    assert mounts_at(real) == 1 and (real / "mine").read_text() == "precious\n"


@pytest.mark.mounts
def test_check_reports_a_stackpoint_whose_directory_moved(stacko: Runner, workdir: Path) -> None:
    stacko("new-image", "base")
    (workdir / "p" / "data").mkdir(parents=True)
    stacko("new-stackpoint", "sp", "base", "--path", str(workdir / "p" / "data"))
    os.rename(workdir / "p", workdir / "moved")
    (workdir / "p").symlink_to("moved")
    r = stacko("check", rc=1)
    assert "now resolves to" in r.stdout and str(workdir / "moved" / "data") in r.stdout

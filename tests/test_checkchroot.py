"""A checked cutover whose check looks inside the new image (issue 23): the
check runs on the host in the stackpoint's directory, so an absolute path is
the host's; `chroot "$STACKO_DIR" …` runs it inside the new root, which sees
the image's own /proc, /dev and /sys with nothing mounted on them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Runner

pytestmark = pytest.mark.mounts


def tiny_root(directory: Path, files: dict) -> Path:
    """A directory a chroot can run /bin/sh in: the host's shell and its libraries."""
    shell = os.path.realpath("/bin/sh")
    libs = [w for line in subprocess.run(["ldd", shell], capture_output=True, text=True,
                                         check=True).stdout.splitlines()
            for w in line.split() if w.startswith("/")]
    for path in [shell] + libs:
        target = directory / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    (directory / "bin").mkdir(exist_ok=True)
    if not (directory / "bin/sh").exists():
        (directory / "bin/sh").symlink_to(shell)
    for d in ("proc", "dev", "sys", "etc"):
        (directory / d).mkdir(exist_ok=True)
    for rel, text in files.items():
        (directory / rel).write_text(text)
    return directory


@pytest.fixture
def point(stacko: Runner, workdir: Path) -> Path:
    """Stackpoint p on image A, mounted; image B has /etc/stacko-added."""
    stacko("import-image", "A", str(tiny_root(workdir / "a", {"etc/os": "A\n"})))
    stacko("import-image", "B", str(tiny_root(workdir / "b", {"etc/os": "B\n",
                                                             "etc/stacko-added": "yes\n"})))
    stacko("new-stackpoint", "p", "A")
    return Path(stacko("mount-stackpoint", "p").out)


def current(stacko: Runner) -> str:
    return json.loads(stacko("list-stackpoints", "--json").out)[0]["current"]


def test_a_check_with_an_absolute_path_looks_at_the_host(point: Path, stacko: Runner) -> None:
    assert not Path("/etc/stacko-added").exists()
    r = stacko("cutover-stackpoint", "p", "B", "--check", "test -f /etc/stacko-added", rc=1)
    assert "fell back to image 'A'" in r.stderr and current(stacko) == "A"
    # relative to the stackpoint's directory, its cwd, the file is found
    stacko("cutover-stackpoint", "p", "B", "--check", "test -f etc/stacko-added")
    assert current(stacko) == "B"


def test_a_check_inside_the_new_root_with_chroot(point: Path, stacko: Runner) -> None:
    check = 'chroot "$STACKO_DIR" /bin/sh -c "test -f /etc/stacko-added && test -d /proc"'
    r = stacko("cutover-stackpoint", "p", "B", "--check", check)
    assert r.out == str(point) and current(stacko) == "B"
    # and it fails as any check fails: back to A, exit 1
    stacko("fallback-stackpoint", "p")
    stacko("cutover-stackpoint", "p", "B", "--check",
           'chroot "$STACKO_DIR" /bin/sh -c "test -f /etc/not-there"', rc=1)
    assert current(stacko) == "A" and (point / "etc/os").read_text() == "A\n"


def test_a_chrooted_check_sees_nothing_mounted_on_proc_dev_sys(point: Path,
                                                                stacko: Runner) -> None:
    # As docs/cutover.md says: the new root's own directories, nothing mounted there.
    check = ('chroot "$STACKO_DIR" /bin/sh -c '
             '"test ! -e /proc/self && test ! -e /dev/null && test ! -e /sys/kernel"')
    stacko("cutover-stackpoint", "p", "B", "--check", check)
    assert current(stacko) == "B"


def test_a_chrooted_check_can_mount_proc_in_a_namespace_of_its_own(point: Path,
                                                                    stacko: Runner) -> None:
    # The pattern docs/cutover.md gives; the mount ends with the check.
    check = ('unshare -m sh -c \'mount -t proc proc "$STACKO_DIR/proc" && '
             'chroot "$STACKO_DIR" /bin/sh -c "test -e /proc/self/status"\'')
    stacko("cutover-stackpoint", "p", "B", "--check", check)
    assert current(stacko) == "B"
    mounts = Path("/proc/self/mountinfo").read_text().split("\n")
    assert not any(f" {point}/proc " in line for line in mounts)
    stacko("umount-stackpoint", "p")             # nothing left mounted inside it

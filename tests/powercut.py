"""What the disk holds if the power fails now: a state root on a loop-mounted
ext4, and copies of its backing file taken while it is mounted.

ext4 mounted with ``commit=1`` commits its journal (the metadata) every second
but, with delayed allocation, writes file data back only after about 30
seconds.  A copy of the backing file taken a few seconds after a command is
therefore what a power cut at that moment would leave: the metadata the
journal committed, without the data that nobody synced.  The copy is fsck'd
(``e2fsck -fy`` replays the journal, as a boot would) and loop-mounted, and
the test then looks at the state root in it.

Usage (any command: import, pull, close, commit, cutover …)::

    with LoopRoot(workdir) as disk:
        run_stacko(disk.root, "import-image", "x", archive)
        copy = disk.power_cut()          # the root as it would be after a reboot
        assert_whole(copy)               # every listed image verifies clean, check clean

No device-mapper is needed; only mkfs.ext4, e2fsck, cp and mount.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import List, Optional

from conftest import run_stacko

JOURNAL_WAIT = 3.0        # seconds: commit=1, with a margin for a loaded machine


def sh(*argv: str, ok: tuple = (0,)) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    assert proc.returncode in ok, f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stderr}"
    return proc


class LoopRoot:
    """An ext4 filesystem in a sparse file, loop-mounted with commit=1; the state
    root is ``root`` on it.  Each power_cut() gives a new fsck'd, mounted copy."""

    def __init__(self, workdir: Path, size_mb: int = 768, commit: int = 1) -> None:
        self.workdir = workdir
        self.backing = workdir / "disk.img"
        self.mnt = workdir / "disk"
        self.root = self.mnt / "root"
        self.size_mb = size_mb
        self.mounted: List[Path] = []
        self.copies = 0
        # commit=1: the journal commits every second, so a copy taken after
        # JOURNAL_WAIT holds every change made so far (but not the data nobody
        # synced).  A long interval (60) commits nothing that no fsync forced:
        # the copy is what a power cut right after the command would leave.
        self.commit = commit

    def __enter__(self) -> "LoopRoot":
        with open(self.backing, "wb") as f:
            f.truncate(self.size_mb << 20)
        sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
           str(self.backing))
        self.mnt.mkdir()
        sh("mount", "-o", f"loop,commit={self.commit}", str(self.backing), str(self.mnt))
        self.mounted.append(self.mnt)
        return self

    def __exit__(self, *exc: object) -> None:
        for path in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        self.mounted.clear()

    def power_cut(self, wait: float = JOURNAL_WAIT) -> Path:
        """Wait for the journal commit, copy the disk as it is now, fsck and mount
        the copy; returns the state root in it."""
        time.sleep(wait)
        self.copies += 1
        copy = self.workdir / f"copy-{self.copies}.img"
        sh("cp", "--sparse=always", str(self.backing), str(copy))
        # 0: clean; 1: errors corrected (the journal replayed); more is a failure.
        sh("e2fsck", "-fy", str(copy), ok=(0, 1))
        target = self.workdir / f"copy-{self.copies}"
        target.mkdir()
        sh("mount", "-o", "loop", str(copy), str(target))
        self.mounted.append(target)
        return target / "root"


def listed_images(root: Path) -> List[str]:
    out = run_stacko(root, "list-images").out
    return out.split("\n") if out else []


def assert_whole(root: Path, check: bool = True) -> List[str]:
    """Every image the metadata of root lists has all its content (verify-image
    clean), and, when check is True, `stacko check` finds nothing; returns the
    images."""
    names = listed_images(root)
    if names:
        result = run_stacko(root, "verify-image", *names, rc=None)
        assert result.returncode == 0 and not result.stdout, (
            f"after the power cut, images lost content:\n{result.stdout}{result.stderr}")
    if check:
        result = run_stacko(root, "check", rc=None)
        assert result.returncode == 0, f"check after the power cut:\n{result.stdout}"
    return names


def images_json(root: Path) -> Optional[dict]:
    path = root / "images.json"
    return json.loads(path.read_text())["images"] if path.exists() else None

"""A power cut loses nothing stacko said was done (CONTRACT: "a command that
exits 0 has made durable everything it recorded").

Each test runs a command on a state root on a loop-mounted ext4 (commit=1),
then takes the disk as a power cut would leave it (tests/powercut.py) and
checks that every image its metadata lists has all its content and that
`stacko check` is clean.  Without the syncfs before recording, the import
test fails: images.json lists the image and its files are 0 bytes long.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import random_tar, run_stacko
from powercut import LoopRoot, assert_whole, images_json

pytestmark = pytest.mark.mounts


@pytest.fixture
def disk(workdir: Path):
    with LoopRoot(workdir) as d:
        yield d


def write_files(directory: Path, count: int, size: int, seed: int) -> None:
    rng = random.Random(seed)
    for n in range(count):
        sub = directory / f"d{n % 20}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{n}").write_bytes(rng.randbytes(size))


def test_import_survives_a_power_cut(disk: LoopRoot, workdir: Path) -> None:
    archive = random_tar(workdir / "rootfs.tar", files=3000, size=4096, dirs=30)
    run_stacko(disk.root, "import-image", "imported", str(archive))
    copy = disk.power_cut()
    assert assert_whole(copy) == ["imported"]
    image = images_json(copy)["imported"]
    assert 3000 * 4096 <= image["size"] < 3000 * 4096 + (1 << 20)   # allocated
    # What the user sees: the files, whole, through a mounted stackpoint.
    run_stacko(copy, "new-stackpoint", "p", "imported")
    mounted = Path(run_stacko(copy, "mount-stackpoint", "p").out)
    assert (mounted / "d7" / "f7").stat().st_size == 4096
    run_stacko(copy, "umount-stackpoint", "p")


def test_close_image_survives_a_power_cut(disk: LoopRoot) -> None:
    run_stacko(disk.root, "new-image", "edited")
    directory = Path(run_stacko(disk.root, "edit-image", "edited").out)
    write_files(directory, 1500, 8192, seed=2)
    run_stacko(disk.root, "close-image", "edited")
    copy = disk.power_cut()
    assert assert_whole(copy) == ["edited"]
    assert 1500 * 8192 <= images_json(copy)["edited"]["size"] < 1500 * 8192 + (1 << 20)


def test_commit_and_cutover_survive_a_power_cut(disk: LoopRoot, workdir: Path) -> None:
    archive = random_tar(workdir / "base.tar", files=200, size=4096, dirs=4, seed=3)
    run_stacko(disk.root, "import-image", "base", str(archive))
    run_stacko(disk.root, "new-stackpoint", "p", "base")
    mounted = Path(run_stacko(disk.root, "mount-stackpoint", "p").out)
    write_files(mounted, 1500, 8192, seed=4)
    run_stacko(disk.root, "commit-stackpoint", "p", "committed")
    copy = disk.power_cut()
    assert assert_whole(copy) == ["base", "committed"]
    assert 1500 * 8192 <= images_json(copy)["committed"]["size"] < 1500 * 8192 + (1 << 20)

    # A cutover to a new image records a new instance: its layer and workdir
    # must be on disk when stackpoints.json names them.
    run_stacko(disk.root, "new-image", "next", "committed")
    run_stacko(disk.root, "cutover-stackpoint", "p", "next")
    copy = disk.power_cut()
    assert assert_whole(copy) == ["base", "committed", "next"]
    assert '"current": "next"' in (copy / "stackpoints.json").read_text()
    # After the "reboot" the stackpoint mounts and shows the committed files.
    shown = Path(run_stacko(copy, "mount-stackpoint", "p").out)
    assert (shown / "d3" / "f3").stat().st_size == 8192
    run_stacko(copy, "umount-stackpoint", "p")


@pytest.mark.parametrize("delay", [0.4, 0.8, 1.2, 1.8])
def test_a_killed_import_leaves_only_whole_images(disk: LoopRoot, workdir: Path,
                                                  delay: float) -> None:
    """Killed part way, then the power cut: whatever the copy lists is whole."""
    first = random_tar(workdir / "first.tar", files=500, size=4096, dirs=5, seed=5)
    run_stacko(disk.root, "import-image", "first", str(first))
    archive = random_tar(workdir / "rootfs.tar", files=3000, size=4096, dirs=30, seed=6)
    argv = [sys.executable, "-m", "stacko", "--root", str(disk.root), "import-image",
            "second", str(archive)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    copy = disk.power_cut()
    names = assert_whole(copy, check=False)
    assert "first" in names and set(names) <= {"first", "second"}
    # What the kill left (staging, an unrecorded layer) check --repair clears.
    run_stacko(copy, "check", "--repair", rc=None)
    run_stacko(copy, "check")

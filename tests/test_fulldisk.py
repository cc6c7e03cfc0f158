"""A full disk, a read-only one, a root the user may not read: every system
error is `stacko: error: …` with a hint, never a traceback, and changes
nothing; and on a disk filled to the last block an unused image can still be
deleted, to make room (issue 18, items 9 and 15; stacko/spare.py)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import random_tar, run_stacko, snapshot
from powercut import LoopRoot
from stacko import errors, spare

mounts = pytest.mark.mounts


def fill(directory: Path, tag: str = "") -> None:
    """Write until the filesystem has not one block left, for root too (which
    may use ext4's reserve): large writes first, then ever smaller ones."""
    for n, size in enumerate((1 << 20, 64 << 10, 4096, 512, 1)):
        fd = os.open(directory / f"filler{tag}{n}", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    os.write(fd, b"\0" * size)
                    os.fsync(fd)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
        finally:
            os.close(fd)
    # f_bfree keeps what ext4 holds back from everyone (its reserved clusters);
    # what root may have, ext4's reserve for root included, is gone.
    assert os.statvfs(directory).f_bavail == 0, "the disk is not full"


def write_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))


def free(path: Path) -> int:
    """Free bytes, ext4's reserve for root included (which the filler took)."""
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


def refused(root: Path, *argv: str, why: str) -> None:
    """argv exits 1 with a message and a hint saying why, and changes nothing."""
    before = snapshot(root)
    result = run_stacko(root, *argv, rc=1)
    assert result.stderr.startswith("stacko: error: "), (argv, result.stderr)
    assert "\nstacko: hint: " in result.stderr and why in result.stderr, (argv, result.stderr)
    assert snapshot(root) == before, argv


@mounts
def test_a_full_disk_refuses_cleanly_and_an_unused_image_can_still_go(workdir: Path) -> None:
    with LoopRoot(workdir, size_mb=64) as disk:
        root = disk.root
        run_stacko(root, "new-image", "base")
        edit = Path(run_stacko(root, "edit-image", "base").out)
        write_file(edit / "etc" / "conf", 3000)
        run_stacko(root, "close-image", "base")
        run_stacko(root, "new-image", "unused", "base")
        edit = Path(run_stacko(root, "edit-image", "unused").out)
        write_file(edit / "big", 4 << 20)
        run_stacko(root, "close-image", "unused")
        run_stacko(root, "new-image", "next", "base")
        run_stacko(root, "new-stackpoint", "sp", "base")
        point = Path(run_stacko(root, "mount-stackpoint", "sp").out)
        write_file(point / "changed", 1000)
        archive = random_tar(workdir / "small.tar", files=2, size=100)
        assert (root / spare.NAME).stat().st_blocks * 512 >= spare.BASE

        fill(disk.mnt)
        full = "the filesystem of " + str(root) + " is full"
        for argv in (("new-image", "n"), ("new-image", "n", "base"),
                     ("new-stackpoint", "sp2", "base"), ("cutover-stackpoint", "sp", "next"),
                     ("edit-image", "next"), ("commit-stackpoint", "sp", "committed"),
                     ("new-stackpoint-instance", "sp", "next"),
                     ("import-image", "imp", str(archive))):
            refused(root, *argv, why=full)
        assert (point / "changed").exists()          # still mounted on its instance
        usage = json.loads(run_stacko(root, "df", "--json").out)
        assert usage["reclaimable"] >= 4 << 20 and usage["free"] < 64 << 10

        before = free(disk.mnt)
        run_stacko(root, "delete-image", "unused")
        # 4 MiB freed, less the spare made again from them
        assert free(disk.mnt) - before >= (4 << 20) - spare.wanted(str(root))
        assert run_stacko(root, "list-images").out.split() == ["base", "next"]
        assert (root / spare.NAME).stat().st_blocks * 512 >= spare.BASE   # made again
        run_stacko(root, "check")
        run_stacko(root, "new-image", "n")                # there is room again
        assert run_stacko(root, "verify-image", "base", "next", "n").out == ""
        run_stacko(root, "umount-stackpoint", "sp")


@mounts
def test_a_deletion_uses_the_spare_and_nothing_else_does(workdir: Path) -> None:
    """Only a write that forgets layers may use the spare: an edit-image that
    unseals an image on a full disk must not take the room a deletion needs.
    Each kind of deletion works on a full disk, one after the other."""
    with LoopRoot(workdir, size_mb=64) as disk:
        root = disk.root
        for name in ("a", "b", "c", "d"):
            run_stacko(root, "new-image", name)
        run_stacko(root, "new-stackpoint", "p", "c")
        run_stacko(root, "new-stackpoint-instance", "p", "d")
        (root / "edit" / "a").mkdir()                    # so that edit-image gets to its record
        fill(disk.mnt)
        refused(root, "edit-image", "a", why="is full")
        for n, argv in enumerate((("delete-image", "b"), ("delete-stackpoint-instance", "p", "d"),
                                  ("delete-stackpoint", "p"))):
            assert (root / spare.NAME).stat().st_blocks * 512 >= spare.BASE, argv
            fill(disk.mnt, tag=f"-{n}-")
            run_stacko(root, *argv)
        assert run_stacko(root, "list-images").out.split() == ["a", "c", "d"]
        assert run_stacko(root, "list-stackpoints").out == ""
        (root / "edit" / "a").rmdir()
        run_stacko(root, "check")


@mounts
def test_a_read_only_root_says_so(workdir: Path) -> None:
    with LoopRoot(workdir, size_mb=64) as disk:
        run_stacko(disk.root, "new-image", "a")
        subprocess.run(["mount", "-o", "remount,ro", str(disk.mnt)], check=True)
        for argv in (("new-image", "b"), ("delete-image", "a"), ("new-stackpoint", "p", "a")):
            refused(disk.root, *argv, why="mounted read-only")
        assert run_stacko(disk.root, "list-images").out == "a"


def test_every_os_error_gets_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    """The top-level handler: an OSError that no code worded becomes a message
    naming the file, with a hint for its errno; no traceback."""
    from stacko import cli, images
    for code, words in ((errno.ENOSPC, "is full; delete unused images"),
                        (errno.EDQUOT, "quota"), (errno.EROFS, "read-only"),
                        (errno.EACCES, "need root"), (errno.EIO, "dmesg"),
                        (errno.ENOTCONN, "stacko check")):
        def fail(*args: object, **kwargs: object) -> None:
            raise OSError(code, os.strerror(code), "/some/file")
        monkeypatch.setattr(images, "new_image", fail)
        assert cli.main(["--root", str(tmp_path / "r"), "new-image", "x"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"stacko: error: /some/file: {os.strerror(code)}\n"), err
        assert "stacko: hint: " in err and words in err, err
    failure = errors.os_error(OSError(errno.ENOSPC, "No space left on device"), "/r", "cannot x")
    assert isinstance(failure, errors.NoSpace) and failure.message == \
        "cannot x: No space left on device" and "the filesystem of /r is full" in failure.hint


def test_which_writes_may_use_the_spare() -> None:
    images = {"a": {"layer": "aaaaa"}, "b": {"layer": "bbbbb"}}
    points = {"p": {"instances": [{"image": "a", "layer": "ccccc"},
                                  {"image": "b", "layer": "ddddd"}]}}
    assert spare.forgets_layers(images, {"a": images["a"]})                # delete-image
    assert spare.forgets_layers(points, {})                                 # delete-stackpoint
    assert spare.forgets_layers(points, {"p": {"instances": [{"layer": "ccccc"}]}})
    assert not spare.forgets_layers(images, {**images, "a": {"layer": "aaaaa", "x": 1}})
    assert not spare.forgets_layers(images, {"a": images["a"], "c": {"layer": "eeeee"}})
    assert not spare.forgets_layers(images, {**images, "c": {"layer": "eeeee"}})


@mounts
def test_a_user_on_roots_root_is_told_permission_denied() -> None:
    """Not "is not a stacko root, refusing to make one there" (issue 18, item 15)."""
    import pwd
    from test_cli import python_for
    nobody = pwd.getpwnam("nobody").pw_uid
    python = python_for(nobody)
    base = tempfile.mkdtemp(prefix="stacko-eacces-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        root = Path(base) / "root"
        run_stacko(root, "new-image", "a")
        before = snapshot(root)
        env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        for argv in (("new-image", "b"), ("delete-image", "a"), ("list-images",)):
            proc = subprocess.run([python, "-m", "stacko", "--root", str(root), *argv],
                                  user=nobody, env=env, capture_output=True, text=True, cwd="/")
            assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert proc.stderr.startswith("stacko: error: permission denied"), proc.stderr
            assert str(root) in proc.stderr and "not a stacko root" not in proc.stderr
            assert "stacko: hint: it belongs to root" in proc.stderr
        assert snapshot(root) == before
    finally:
        shutil.rmtree(base)

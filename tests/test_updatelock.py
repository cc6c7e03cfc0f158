"""update-stackpoint's lock of a stackpoint (<root>/tmp/update-POINT.lock):
delete-stackpoint removes it with the stackpoint, but never while an update
holds it, nor through a symlink; an update that waited on a lock removed
meanwhile takes the new one.  (update-stackpoint making it and delete-stackpoint
removing it, against a registry: test_update.py.)"""
from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import Runner
from stacko.state import Store
from stacko.update import UpdateLock


def lock_path(root: Path) -> Path:
    return root / "tmp" / "update-p.lock"


@pytest.fixture
def point(stacko: Runner, root: Path) -> str:
    stacko("new-image", "seed")
    stacko("new-stackpoint", "p", "seed")
    return "p"


def leave_lock(root: Path) -> None:
    """What an update of p that ended leaves behind."""
    with UpdateLock(Store(str(root)), "p"):
        pass
    assert lock_path(root).is_file()


def test_delete_stackpoint_removes_its_update_lock(stacko: Runner, root: Path, point: str) -> None:
    leave_lock(root)
    stacko("delete-stackpoint", "p")
    assert not lock_path(root).exists()
    assert stacko("list-stackpoints").out == ""


def test_an_update_lock_held_stays(stacko: Runner, root: Path, point: str) -> None:
    leave_lock(root)
    fd = os.open(lock_path(root), os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)        # an update of p is running
        stacko("delete-stackpoint", "p")
        assert os.fstat(fd).st_ino == os.stat(lock_path(root)).st_ino
    finally:
        os.close(fd)
    assert stacko("list-stackpoints").out == ""


def test_a_symlink_in_place_of_the_lock_is_left_alone(stacko: Runner, root: Path, point: str,
                                                       tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep")
    os.makedirs(root / "tmp", mode=0o700, exist_ok=True)
    lock_path(root).symlink_to(target)
    stacko("delete-stackpoint", "p")
    assert lock_path(root).is_symlink() and target.read_text() == "keep"


def opened(path: str) -> int:
    """How many descriptors of this process are open on path."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:
            pass
    return count


def test_an_update_that_waited_on_a_removed_lock_takes_the_new_one(root: Path) -> None:
    store = Store(str(root))
    os.makedirs(store.tmp_dir, mode=0o700)
    path = store.update_lock_path("p")
    holder = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    taken: list[UpdateLock] = []

    def enter() -> None:
        lock = UpdateLock(store, "p")
        lock.__enter__()
        taken.append(lock)

    waiter = threading.Thread(target=enter, daemon=True)
    waiter.start()
    deadline = time.monotonic() + 30
    while opened(path) < 2:     # the holder's and the waiting update's
        assert time.monotonic() < deadline, "the update never opened its lock"
        time.sleep(0.005)
    os.unlink(path)             # as delete-stackpoint does, holding the lock
    os.close(holder)
    waiter.join(30)
    assert taken, "the update never took its lock"
    try:
        assert os.fstat(taken[0].fd).st_ino == os.stat(path).st_ino
    finally:
        taken[0].__exit__()


"""Staging directories under ``<root>/tmp`` for imports, pulls and exports.

These commands work in their staging directory without holding the root's lock
(a download may take minutes, and a boot-time ``mount-stackpoint`` must not wait
for it), so "we hold the exclusive lock" no longer means "nobody else stages".
Each staging directory carries a ``.busy`` file on which its owner holds an
flock for as long as it works; the kernel drops the flock when the owner dies,
however it dies, so a leftover is one whose flock can be taken.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from stacko.state import Store, remove_flat, remove_tree

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Iterator

BUSY = ".busy"


@contextlib.contextmanager
def staging_dir(tmp_dir: str, kind: str) -> Iterator[str]:
    """A fresh staging directory, marked busy while the block runs, then removed."""
    os.makedirs(tmp_dir, mode=0o700, exist_ok=True)
    path = os.path.join(tmp_dir, f"{kind}-{os.getpid()}-{os.urandom(4).hex()}")
    os.mkdir(path, 0o700)
    fd = os.open(os.path.join(path, BUSY), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        try:
            remove_staging(path)
        finally:
            os.close(fd)


def remove_staging(path: str) -> None:
    """What is left of a staging directory at the end is most often nothing
    but its .busy marker (an import's layers were renamed into place) or a few
    files (the blobs an export or a push packed): those are removed here,
    without starting `rm -rf` (a process, and subwrap and subprocess to start
    it).  Anything else (a layer left by a failure, with its subdirectories)
    goes to remove_tree, as does whatever cannot be unlinked (state.remove_flat)."""
    remove_flat(path)


def in_use(path: str) -> bool:
    """Whether a live command still works in the staging directory path."""
    try:
        fd = os.open(os.path.join(path, BUSY), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        # No marker yet (made a moment ago), or made by an older stacko: the
        # process named in import-PID-… decides.
        parts = os.path.basename(path).split("-")
        return len(parts) >= 3 and parts[1].isdigit() and os.path.exists(f"/proc/{parts[1]}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)
    return False


def clean(store: Store) -> None:
    """Remove what killed imports, pulls and exports left behind (never a live
    one's, and only the names stacko makes)."""
    from stacko import mounttable
    if not os.path.isdir(store.tmp_dir):
        return
    if mounttable.mounts_under(store.tmp_dir):
        return          # never rmtree beneath a mount; `stacko check` will say so
    for entry in store.staging_entries():
        path = os.path.join(store.tmp_dir, entry)
        if not in_use(path):
            with contextlib.suppress(OSError):
                remove_tree(path)

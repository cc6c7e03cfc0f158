"""Making what a command is about to record durable before it records it.

A command that exits 0 promises that a power cut right after it loses nothing
it reported done.  Renaming a metadata file into place (state.atomic_write)
is not enough: ext4 and xfs allocate file data late, and their journals
commit the metadata that names a file well before its data reaches the disk.
After a power cut images.json then lists a layer whose files are all 0 bytes
long.  So every command that publishes new data calls ``sync_filesystem``
after writing it (and after the renames that move it into place) and before
the metadata that names it is written.

``syncfs(2)`` writes back the whole filesystem of the root in one call, in
the order the filesystem prefers, whatever the number of files.  The other way,
fsync of every file and directory (``fsync_tree``, kept for bench/bench_durable.py
which measures both), costs one journal commit per call; see
docs/robustness.md for the figures and why syncfs won.

The C library (lean.libc, ctypes' C core) is loaded inside the function: the
listing and mount paths never need it.
"""
from __future__ import annotations

import os

from stacko.errors import os_error
from stacko.quoting import quote


def sync_filesystem(path: str) -> None:
    """syncfs(2) the filesystem that holds path; raise if the data cannot be written.

    Since Linux 5.8 syncfs reports writeback errors (EIO, ENOSPC) that happened
    on the filesystem since the file was opened, so a failure here means the
    data is not safe and the caller must not record it."""
    from stacko.lean import libc     # here: see the module's docstring

    c = libc()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            syncfs = c.function("syncfs", c.c_int)
        except AttributeError:     # a libc without it (never on a current glibc or musl)
            os.sync()
            return
        if syncfs(c.c_int(fd)) != 0:
            err = c.get_errno()
            failure = os_error(OSError(err, os.strerror(err)), path,
                               f"cannot write the data under {quote(path)} to disk")
            raise type(failure)(failure.message, f"nothing was recorded; {failure.hint}")
    finally:
        os.close(fd)


def fsync_path(path: str) -> None:
    """fsync one file or directory (opened read-only: that is enough on Linux)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_new_dirs(*paths: str) -> None:
    """Make freshly made (empty) directories durable: each one and its parent.
    Cheaper than syncfs when nothing else is new, and bounded on a busy
    filesystem, which matters on the paths that switch a stackpoint."""
    done = set()
    for path in paths:
        for target in (path, os.path.dirname(path)):
            if target not in done:
                done.add(target)
                try:
                    fsync_path(target)
                except OSError as e:
                    raise os_error(e, target, f"cannot sync {quote(target)}") from None


def fsync_tree(root: str, workers: int = 8) -> int:
    """fsync every file and directory under root, in parallel; returns how many.
    The alternative to sync_filesystem; only the benchmark uses it."""
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    todo = [root]
    while todo:                    # iterative: layers may nest deeper than recursion allows
        directory = todo.pop()
        paths.append(directory)
        with os.scandir(directory) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    todo.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    paths.append(entry.path)
    # Files first, then directories deepest first, so that a directory's entries
    # are on disk before the directory that names them.
    files = [p for p in paths if not os.path.isdir(p)]
    dirs = sorted((p for p in paths if os.path.isdir(p)), key=lambda p: -p.count("/"))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fsync_path, files))
        list(pool.map(fsync_path, dirs))
    return len(paths)

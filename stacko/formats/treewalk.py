"""A directory tree that someone else can write, walked by descriptors, as GNU
tar and CPython's fwalk do: each directory is listed (its names, then an lstat
of each through the directory's descriptor), and each entry is then opened by
its one name relative to that descriptor with O_NOFOLLOW (O_DIRECTORY for a
directory, O_NONBLOCK for a file, so that a FIFO put in its place cannot block
the open; O_PATH for a symlink, device or fifo, which is never opened for I/O).
What was opened is compared with what was listed (device, inode, type): an
entry that was swapped, for a symlink or anything else, or removed since it
was listed is an error naming it.  No path of more than one name is handed to
the kernel, so a tree deeper than PATH_MAX is walked as any other.
"""
from __future__ import annotations

import errno
import os
import stat

from stacko.errors import StackoError
from stacko.quoting import quote, quoted

O_NOATIME = getattr(os, "O_NOATIME", 0)     # needs the owner or CAP_FOWNER
OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
OPEN_NODE = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC      # symlinks, devices, fifos
SPARE_FDS = 64
CHANGED_HINT = ("import a tree that nothing changes meanwhile: a snapshot, or a copy, or "
                "stop what writes to it")


class BadSource(StackoError):
    """The directory cannot be read as a whole."""


def identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def proc_fd(fd: int) -> str:
    # /proc/self/fd/N leads to what N was opened on, a symlink opened with
    # O_PATH|O_NOFOLLOW included, and is not followed further: the way to the
    # xattrs of a symlink or a device that we never open for I/O.
    return f"/proc/self/fd/{fd}"


class Frame:
    """One directory of the walk: its descriptor, what fstat said of it, and the
    descriptor of its copy; names are kept, paths made only for messages."""
    __slots__ = ("fd", "st", "name", "parent", "dst", "subdirs")

    def __init__(self, fd: int, st: os.stat_result, name: str, parent: Frame | None) -> None:
        self.fd, self.st, self.name, self.parent = fd, st, name, parent
        self.dst = -1
        self.subdirs: list[tuple[str, os.stat_result]] = []

    def names(self) -> list[str]:
        found, frame = [], self
        while frame.parent is not None:
            found.append(frame.name)
            frame = frame.parent
        return found[::-1]

    def close(self) -> None:
        for fd in (self.fd, self.dst):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dst = -1


class Walker:
    """A walk of the source by descriptors: begin(frame) on entering a directory,
    entry() for each of its other entries, stub() for a directory not entered
    (another filesystem, the state root), leave(frame) once it is all done."""

    def __init__(self, source: str, device: int, own: dict[tuple[int, int], str]) -> None:
        self.source, self.device, self.own = source, device, own
        self.noatime = O_NOATIME
        self.at: tuple[Frame | None, str | None] = (None, None)
        self.fd_limit = 0

    # --- what a subclass does ---
    def begin(self, frame: Frame) -> None: ...

    def entry(self, frame: Frame, name: str, st: os.stat_result) -> None: ...

    def stub(self, frame: Frame, name: str, st: os.stat_result, why: str) -> None: ...

    def leave(self, frame: Frame) -> None: ...

    # --- the walk ---
    def walk(self, top_fd: int, top: os.stat_result) -> None:
        """Pre-order, iteratively (a tree may be deeper than Python recurses); a
        directory's subdirectories after its other entries, its attributes last."""
        stack: list[Frame] = []
        try:
            stack.append(Frame(os.dup(top_fd), top, "", None))
            self.enter(stack[-1])
            while stack:
                frame = stack[-1]
                if not frame.subdirs:
                    self.at = (frame, None)
                    self.leave(frame)
                    stack.pop().close()
                    continue
                name, listed = frame.subdirs.pop()
                self.at = (frame, name)
                self.room_for(len(stack))
                fd = self.open(frame.fd, name, OPEN_DIR, "directory")
                child = Frame(fd, os.fstat(fd), name, frame)
                stack.append(child)
                self.same(child.st, listed, "another directory took its place")
                self.enter(child)
        except OSError as e:
            raise BadSource(f"cannot import {quote(self.source)}: {quoted(self.where())}: "
                            f"{e.strerror or e}") from None
        finally:
            for frame in stack:
                frame.close()

    def enter(self, frame: Frame) -> None:
        self.at = (frame, None)
        self.begin(frame)
        with os.scandir(frame.fd) as it:
            names = sorted(e.name for e in it)
        listed = []             # the whole listing first, then each entry opened
        for name in names:
            self.at = (frame, name)
            try:
                listed.append((name, os.stat(name, dir_fd=frame.fd, follow_symlinks=False)))
            except FileNotFoundError:
                raise self.changed("it was removed") from None
        for name, st in listed:
            self.at = (frame, name)
            if not stat.S_ISDIR(st.st_mode):
                self.entry(frame, name, st)
            elif st.st_dev != self.device:
                self.stub(frame, name, st, "mount")
            elif identity(st) in self.own:
                self.stub(frame, name, st, self.own[identity(st)])
            else:
                frame.subdirs.append((name, st))
        frame.subdirs.reverse()         # popped in sorted order

    def open(self, dir_fd: int, name: str, flags: int, kind: str) -> int:
        """Open one name beneath dir_fd, never through a symlink."""
        try:
            noatime = 0 if flags & os.O_PATH else self.noatime
            return os.open(name, flags | noatime, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.EPERM and self.noatime and not flags & os.O_PATH:
                self.noatime = 0        # not our file, no CAP_FOWNER: atimes it is
                return self.open(dir_fd, name, flags, kind)
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO):
                why = "it was removed" if e.errno == errno.ENOENT else \
                    f"it is no longer a {kind}: something else took its place"
                raise self.changed(why) from None
            raise

    def same(self, opened: os.stat_result, listed: os.stat_result, why: str) -> None:
        if identity(opened) != identity(listed) or \
                stat.S_IFMT(opened.st_mode) != stat.S_IFMT(listed.st_mode):
            raise self.changed(why)

    def room_for(self, depth: int) -> None:
        """Enough descriptors for a directory and its copy at each level."""
        need = 2 * depth + SPARE_FDS
        if need <= self.fd_limit:
            return
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if need > soft:
            if hard != resource.RLIM_INFINITY and need > hard:
                raise BadSource(f"cannot import {quote(self.source)}: {quoted(self.where())} "
                                f"lies {depth} directories deep, and stacko may open at most "
                                f"{hard} files",
                                hint="raise the hard limit of open files (ulimit -Hn)")
            soft = need * 2 if hard == resource.RLIM_INFINITY else min(hard, need * 2)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.fd_limit = soft

    def where(self) -> str:
        frame, name = self.at
        parts = [self.source.rstrip("/") or ""]
        if frame is not None:
            parts += frame.names()
        if name is not None:
            parts.append(name)
        return "/".join(parts) or "/"

    def changed(self, why: str) -> BadSource:
        return BadSource(f"cannot import {quote(self.source)}: {quoted(self.where())} changed "
                         f"while it was read ({why}); nothing was imported", hint=CHANGED_HINT)


def open_beneath(top_fd: int, names: list[str], flags: int) -> int:
    """Open top/names[0]/…/names[-1], one name at a time, through no symlink."""
    fd = os.dup(top_fd)
    try:
        for name in names[:-1]:
            down = os.open(name, OPEN_DIR, dir_fd=fd)
            os.close(fd)
            fd = down
        return os.open(names[-1], flags, dir_fd=fd)
    finally:
        os.close(fd)

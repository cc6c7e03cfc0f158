"""The root itself: its lock, and the making and checking of the directory.

Store (state.py) inherits RootLock: one flock on <root>/lock per command,
exclusive for changes and shared for listings, with <root>/lock.intent so that
a waiting writer is not starved by readers; a root that another user could
write to is refused; a new root is made, marked (.stacko-root) and made
durable before anything is recorded in it.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import sys
import time

from stacko.errors import LockTimeout, StackoError, os_error

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable

MARKER = ".stacko-root"
INTENT = "lock.intent"      # a writer waiting for the lock holds this: see Store._acquire


class RootLock:
    """The root's lock and its making, for Store (state.py), which sets these."""

    root: str
    layers_dir: str
    work_dir: str
    empty_dir: str
    edit_dir: str
    images_file: str
    stackpoints_file: str
    _lock_fd: int | None
    _exclusive: bool

    def locked(self, exclusive: bool) -> Locked:
        """Hold the root's lock; nests (an inner request reuses the outer lock)."""
        return Locked(self, exclusive)

    def absence(self) -> str | None:
        """Why no stacko state exists at the root, or None when some does (or
        when we may not look: then reading it says so)."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return "it does not exist"
        except NotADirectoryError:
            return "it is not a directory"
        except OSError:
            return None
        if not {"images.json", "stackpoints.json"} & set(names):
            return "it holds no images.json nor stackpoints.json"
        return None

    def _warn_if_absent(self) -> None:
        why = self.absence()
        if why is not None:
            print(f"stacko: warning: no stacko state exists in {self.root} ({why}; "
                  "see --root and $STACKO_ROOT)", file=sys.stderr)

    def _acquire(self, fd: int, exclusive: bool, path: str) -> None:
        """flock gives a waiting writer no priority: readers that keep overlapping
        would hold the shared lock forever.  So a writer that has to wait first
        takes <root>/lock.intent exclusively (one writer at a time), and every
        reader takes it shared, for a moment, before the lock itself: from the
        moment a writer waits, no new reader starts, and the writer gets in once
        the readers already in are done."""
        start = time.monotonic()
        intent_path = os.path.join(self.root, INTENT)
        if not exclusive:
            try:
                intent = open_lock_file(intent_path, False)
            except FileNotFoundError:
                intent = None       # no writer ever had to wait here
            except PermissionError:
                intent = None       # a reader that may not lock: see locked()
            if intent is not None:
                try:
                    wait_for_lock(intent, fcntl.LOCK_SH, path, start)
                finally:
                    os.close(intent)
            wait_for_lock(fd, fcntl.LOCK_SH, path, start)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StackoError(f"cannot lock {path}: {e.strerror}") from None
        intent = open_lock_file(intent_path, True)
        try:
            wait_for_lock(intent, fcntl.LOCK_EX, path, start)
            wait_for_lock(fd, fcntl.LOCK_EX, path, start)
        finally:
            os.close(intent)        # the lock is ours: readers may queue again

    def _refuse_unsafe_root(self) -> None:
        """Whoever may write the root could plant layers or metadata that root then
        mounts or removes: refuse a root that another user can write to."""
        me = os.geteuid()
        # The root's parents too: whoever may write one of them could rename the
        # root away and put a symlink (or a root of theirs) in its place.  A
        # sticky directory (/tmp) lets nobody rename what is not theirs.
        parent = os.path.dirname(self.root)
        while True:
            try:
                st = os.lstat(parent)
            except OSError:
                st = None
            if st is not None and st.st_uid not in (0, me):
                raise StackoError(f"refusing to work in {self.root}: its parent {parent} belongs "
                                  f"to user {st.st_uid}, who could swap the root for another",
                                  hint="choose a root whose parents belong to root")
            if st is not None and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                raise StackoError(f"refusing to work in {self.root}: its parent {parent} is "
                                  f"writable by other users (mode {stat.S_IMODE(st.st_mode):04o}), "
                                  "who could swap the root for another",
                                  hint=f"chmod go-w {parent}")
            if parent == "/":
                break
            parent = os.path.dirname(parent)
        for path in (self.root, self.layers_dir, self.work_dir, self.images_file,
                     self.stackpoints_file, os.path.join(self.root, "lock"),
                     os.path.join(self.root, INTENT)):
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if st.st_uid not in (0, me):
                raise StackoError(f"refusing to work in {self.root}: {path} belongs to "
                                  f"user {st.st_uid}, who could change what stacko mounts",
                                  hint=f"chown -R root: {self.root}")
            if st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode):
                raise StackoError(f"refusing to work in {self.root}: {path} is writable by "
                                  f"other users (mode {stat.S_IMODE(st.st_mode):04o})",
                                  hint=f"chmod go-w {path}")

    def _create_root(self) -> None:
        """Make the root, or add what is missing; a directory that holds other
        things and no stacko state is refused (``--root /var`` is a typo, and
        stacko would clean up in its tmp/)."""
        try:
            os.makedirs(os.path.dirname(self.root), exist_ok=True)
            try:
                os.mkdir(self.root, 0o700)
                fresh = True
            except FileExistsError:
                fresh = False
            marker = os.path.join(self.root, MARKER)
            made = [self.root] if fresh else []
            try:
                os.lstat(marker)
                new_marker = False
            except FileNotFoundError:
                new_marker = True
            except PermissionError:
                # Not "not a stacko root": we may not look (a user's command
                # on root's root).
                raise StackoError(f"permission denied: {q(self.root)} (cannot look for its "
                                  f"{MARKER})", hint=permission_hint(self.root)) from None
            if new_marker:
                if not fresh and not self._earlier_root():
                    raise StackoError(
                        f"{self.root} is not a stacko root (it has no {MARKER} and holds other "
                        "files); refusing to make one there",
                        hint="give --root (or STACKO_ROOT) a new or empty directory")
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, b"a stacko state root: stacko cleans up only where this is\n")
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for sub in (self.layers_dir, self.work_dir, self.empty_dir, self.edit_dir):
                if not os.path.isdir(sub):
                    os.makedirs(sub, mode=0o755 if sub != self.work_dir else 0o700, exist_ok=True)
                    made.append(sub)
            if made or new_marker:
                # Durable before anything is recorded in it: the root's entry in
                # its parent, and the marker's and the directories' in the root
                # (ext4 orders these; other filesystems need not).  Once per root.
                from stacko import durable
                durable.sync_new_dirs(*made, marker)
        except OSError as e:
            raise os_error(e, self.root, f"cannot create the state root {q(self.root)}") from None

    def _earlier_root(self) -> bool:
        """An empty directory, or a root made before there was a marker."""
        try:
            if not os.listdir(self.root):
                return True
        except OSError:
            return False

        def is_a(name: str, kind: Callable[[int], bool]) -> bool:
            try:
                return kind(os.lstat(os.path.join(self.root, name)).st_mode)
            except OSError:
                return False
        return is_a("images.json", stat.S_ISREG) or is_a("stackpoints.json", stat.S_ISREG) \
            or (is_a("lock", stat.S_ISREG) and is_a("l", stat.S_ISDIR))


def permission_hint(path: str) -> str:
    """What to do when this user may not read or change what path holds."""
    try:
        owner = os.stat(path).st_uid
    except OSError:
        owner = 0
    if owner == 0 and os.geteuid() != 0:
        return "it belongs to root: run stacko as root (e.g. with sudo), or give " \
               "--root (or STACKO_ROOT) a root of your own"
    return f"check the owner and mode of {q(path)} and of the directories above it"


def q(path: str) -> str:
    """path as a message shows it (quoting.py), quoting imported only then."""
    from stacko.quoting import quote
    return quote(path)


class Locked:
    """The context of Store.locked: a class, not a contextlib.contextmanager,
    because contextlib (with collections and functools) costs every command's
    start (docs/startup.md)."""

    def __init__(self, store: RootLock, exclusive: bool) -> None:
        self.store, self.exclusive = store, exclusive
        self.fd: int | None = None

    def __enter__(self) -> None:
        store, exclusive = self.store, self.exclusive
        if store._lock_fd is not None:
            if exclusive and not store._exclusive:
                raise AssertionError("exclusive lock requested inside a shared one")
            return
        store._refuse_unsafe_root()
        if exclusive:
            store._create_root()
        elif not os.path.lexists(os.path.join(store.root, "lock")):
            store._warn_if_absent()  # a mistyped --root would otherwise list nothing, silently
            return   # nothing was ever written here: nothing to read consistently
        path = os.path.join(store.root, "lock")
        try:
            fd = open_lock_file(path, exclusive)
        except PermissionError as e:
            if exclusive:
                raise StackoError(f"cannot open the lock {path}: {e.strerror}",
                                  hint="commands that change state need root") from None
            # A reader that may not lock still reads whole files: they are only
            # ever replaced by rename.
            return
        try:
            store._acquire(fd, exclusive, path)
        except BaseException:
            os.close(fd)
            raise
        store._lock_fd, store._exclusive = fd, exclusive
        self.fd = fd

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            if self.exclusive:
                # Before the lock goes: the spare a deletion on a full disk used,
                # made again from the room the deletion freed (spare.py).
                from stacko import spare
                spare.ensure(self.store.root)
            self.store._lock_fd, self.store._exclusive = None, False
            os.close(self.fd)
            self.fd = None


def open_lock_file(path: str, create: bool) -> int:
    """Open a lock file without ever blocking in open (a FIFO planted there would
    hang every command) nor following a symlink (whose target root would create)."""
    flags = (os.O_RDWR | os.O_CREAT if create else os.O_RDONLY) \
        | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StackoError(f"the lock {path} is a symlink; refusing to follow it",
                              hint=f"remove it (`rm {path}`): stacko makes it again") from None
        if isinstance(e, (PermissionError, FileNotFoundError)):
            raise
        raise os_error(e, os.path.dirname(path), f"cannot open the lock {q(path)}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise StackoError(f"the lock {path} is not a regular file", hint=f"remove it (`rm {path}`): "
                          "stacko makes it again")
    return fd


def same_file(fd: int, path: str) -> bool:
    """Whether path (not followed) still names the file open as fd: a lock file
    removed (remove_idle_lock) or replaced while its owner waited is not the lock
    any more, and its owner must open the new one."""
    try:
        st, now = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def remove_idle_lock(path: str) -> bool:
    """Remove the lock file at path if no process holds it; True when removed.

    Taken without waiting, and unlinked while held, so that a process holding it
    keeps it (and its file), and one that opened it before the unlink sees with
    same_file that it locked a removed file.  Never through a symlink: the
    directory and the file are opened with O_NOFOLLOW, and a symlink, a FIFO or
    anything else that is not a regular file is left alone."""
    directory, name = os.path.split(path)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError:         # absent, a symlink (ELOOP), unreadable
            return False
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:     # held: its command runs, and keeps its lock
                return False
            st, now = os.fstat(fd), os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                return False    # replaced since it was opened: not the file we hold
            os.unlink(name, dir_fd=dir_fd)
            return True
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def wait_for_lock(fd: int, how: int, path: str, start: float | None = None) -> None:
    timeout = float(os.environ.get("STACKO_LOCK_TIMEOUT", "300"))
    start = time.monotonic() if start is None else start
    told = False
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StackoError(f"cannot lock {path}: {e.strerror}") from None
        waited = time.monotonic() - start
        # Told before the timeout is checked: a busy machine can keep this process
        # off the processor from before the 1 s mark until past the timeout.
        if not told and waited >= 1.0:
            print(f"stacko: waiting for another stacko command to finish (lock {path})",
                  file=sys.stderr, flush=True)
            told = True
        if waited >= timeout:
            raise LockTimeout(f"gave up waiting for the lock {path} after {timeout:g} s",
                              hint="another stacko command holds it; see `fuser -v` on the file")
        time.sleep(0.02)

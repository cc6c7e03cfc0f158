"""The regular files of a layer, created by a few threads while the unpacker
reads on (layertar).

Creating a file is mostly the kernel's work (open, write, chown, chmod,
utimens, close), done without the GIL, so two threads create files on two
cores.  The unpacker hands over a file only when nothing else of its layer was
ever at its path, and waits for every file handed over (``settle``) before it
does anything that depends on them: a hard link, removing a path to make room,
a member named again, the directories' attributes at the end.  Each thread
touches only the paths handed to it, whose directories the unpacker checked
and made before.  A file's data travels as views of the chunks the reader
read: no copies.
"""
from __future__ import annotations

import collections
import hashlib
import os
import stat
import threading

from stacko.formats.spacebudget import BLOCK
from stacko.formats.tarfields import BadLayer
from stacko.quoting import quote

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from stacko.content import Written
    from stacko.formats.spacebudget import SpaceBudget

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
BATCH_FILES = 32          # files per hand-over: a thread's wake-up costs more than a file
BATCH_BYTES = 1 << 20
THREADS = 2

# (path, data views, uid, gid, mode, mtime_ns, xattrs or None)
Job = tuple


def set_xattrs(where: str | int, xattrs: dict[str, bytes], path: str = "") -> None:
    for name, value in sorted(xattrs.items()):
        try:
            if isinstance(where, int):
                os.setxattr(where, name, value)
            else:
                os.setxattr(where, name, value, follow_symlinks=False)
        except OSError as e:
            raise BadLayer(f"cannot set xattr {name} on {path or where}: {e.strerror}") from None


def create_mode(mode: int) -> int:
    """The mode to create a file with: its own, unless setuid, setgid or sticky
    (0600 then, until its owner is set: chown clears setuid and setgid)."""
    return mode if not mode & 0o7000 else 0o600


def set_up(fd: int, path: str, uid: int, gid: int, mode: int, mtime_ns: int,
           xattrs: dict[str, bytes] | None, written: Written, sha256: str | None) -> None:
    """Owner, xattrs, mode (after chown, which clears setuid) and times of a file
    just written, through its descriptor: the owner and mode only where the file
    as created (fstat) differs from them, so that root makes a plain file with
    four calls after its data, not six.  Then, with its sha256, the file as it is
    now goes to written, for its manifest entry."""
    st = os.fstat(fd)
    changed = False
    if st.st_uid != uid or st.st_gid != gid:
        os.chown(fd, uid, gid)
        changed = True
    if xattrs:
        set_xattrs(fd, xattrs, path)
        changed = True
    if changed or stat.S_IMODE(st.st_mode) != mode:
        os.chmod(fd, mode)
        changed = True
    os.utime(fd, ns=(mtime_ns, mtime_ns))
    if sha256 is not None:
        written.add(fd, sha256, None if changed else st)


def write_file(job: Job, written: Written) -> None:
    """Create one file: its data (hashed, for the content manifest), then the
    rest (set_up), all through its descriptor.  FileExistsError when its path
    is taken."""
    path, views, uid, gid, mode, mtime_ns, xattrs = job
    fd = os.open(path, FLAGS, create_mode(mode))
    try:
        digest = hashlib.sha256()
        for view in views:
            digest.update(view)
            while view:
                view = view[os.write(fd, view):]
        set_up(fd, path, uid, gid, mode, mtime_ns, xattrs, written, digest.hexdigest())
    except OSError as e:
        if e.filename is None:
            e.filename = path
        raise
    finally:
        os.close(fd)


def _write_batch(batch: list[Job], written: Written) -> list[Job]:
    """The jobs whose path was taken, for the unpacker to redo after making room."""
    taken = []
    for job in batch:
        try:
            write_file(job, written)
        except FileExistsError:
            taken.append(job)
    return taken


class Writers:
    """Files handed over in batches to THREADS threads; at most two batches a
    thread wait, so the views they hold stay a few MiB.  A batch is charged to
    the space budget, as a whole, before it is handed over.  Plain threads,
    not concurrent.futures, which imports logging and more (~7 ms of every
    import and pull)."""

    __slots__ = ("written", "budget", "batch", "size", "blocks", "last", "pending", "taken",
                 "lock", "work", "done", "todo", "outstanding", "error", "stopping", "threads")

    def __init__(self, written: Written, budget: SpaceBudget | None = None) -> None:
        self.written = written
        self.budget = budget
        self.blocks = 0          # the batch's files in whole blocks, as the budget counts
        self.last = ""
        self.batch: list[Job] = []
        self.size = 0
        self.pending: set[str] = set()      # relative paths handed over since the last settle
        self.taken: list[Job] = []
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)     # a batch to write, or stop
        self.done = threading.Condition(self.lock)     # a batch written
        self.todo: collections.deque[list[Job]] = collections.deque()
        self.outstanding = 0     # batches handed over and not yet written
        self.error: BaseException | None = None
        self.stopping = False
        self.threads = [threading.Thread(target=self._run, name="stacko-write", daemon=True)
                        for _ in range(THREADS)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self.todo and not self.stopping:
                    self.work.wait()
                if not self.todo:
                    return
                batch = self.todo.popleft()
            try:
                taken, error = _write_batch(batch, self.written), None
            except BaseException as e:      # raised by add() or settle(), in the unpacker
                taken, error = [], e
            with self.lock:
                self.taken.extend(taken)
                if error is not None and self.error is None:
                    self.error = error
                self.outstanding -= 1
                self.done.notify()

    def add(self, rel: str, job: Job, size: int) -> None:
        self.pending.add(rel)
        self.batch.append(job)
        self.size += size
        self.blocks += -(-size // BLOCK) * BLOCK
        self.last = rel
        if len(self.batch) >= BATCH_FILES or self.size >= BATCH_BYTES:
            self._submit()

    def _submit(self, wait_for: int = 2 * THREADS) -> None:
        """Hand the batch over, then wait till at most wait_for batches are left."""
        if self.batch:
            if self.budget is not None:
                last = self.last
                self.budget.take(self.blocks, lambda: f"archive member {quote(last)}",
                                 inodes=len(self.batch))
            self.blocks = 0
            with self.lock:
                self.todo.append(self.batch)
                self.outstanding += 1
                self.work.notify()
            self.batch, self.size = [], 0
        with self.lock:
            while self.outstanding > wait_for and self.error is None:
                self.done.wait()
            if self.error is not None:
                raise self.error

    def settle(self) -> list[Job]:
        """Wait for every file handed over; returns those whose path was taken."""
        self._submit(wait_for=0)
        with self.lock:
            taken, self.taken = self.taken, []
        self.pending.clear()
        return taken

    def close(self) -> None:
        """Stop: what was handed over and not begun is dropped, the rest finished."""
        with self.lock:
            self.stopping = True
            self.outstanding -= len(self.todo)
            self.todo.clear()
            self.work.notify_all()
        for thread in self.threads:
            thread.join()

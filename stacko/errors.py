"""The one exception tree of stacko.

Every expected failure is a StackoError: the CLI prints ``stacko: error: …``
(and the hint) on stderr and exits with ``exit_code``.  Anything else is a bug.
"""
from __future__ import annotations

import errno
import os


class StackoError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(StackoError):
    """Bad usage or an invalid name: exit status 2."""

    exit_code = 2


class InvalidName(UsageError):
    pass


class NeedsRoot(StackoError):
    pass


class NotFound(StackoError):
    pass


class ImageNotFound(NotFound):
    pass


class StackpointNotFound(NotFound):
    pass


class InstanceNotFound(NotFound):
    pass


class AlreadyExists(StackoError):
    pass


class ImageInUse(StackoError):
    pass


class StackTooDeep(StackoError):
    pass


class StackpointBusy(StackoError):
    pass


class MountBusy(StackoError):
    pass


class CommandFailed(StackoError):
    def __init__(self, message: str, hint: str | None = None, *,
                 returncode: int = 1, stderr: str = "") -> None:
        super().__init__(message, hint)
        self.returncode = returncode
        self.stderr = stderr


class MountFailed(StackoError):
    """A mount system call (fsopen, fsconfig, fsmount, move_mount, umount2) failed."""

    def __init__(self, message: str, hint: str | None = None, *, errno: int = 0) -> None:
        super().__init__(message, hint)
        self.errno = errno


class HeldByProcesses(StackpointBusy):
    """An instance's earlier, detached mount is still held by processes."""


class CorruptState(StackoError):
    pass


class LockTimeout(StackoError):
    pass


class LookupTimeout(StackoError):
    """A host name's lookup did not finish in time (lean.lookup)."""


class Interrupted(StackoError):
    """SIGTERM arrived: raised so that ExitStack cleanups run."""

    exit_code = 143       # 128 + SIGTERM, as shells report it: exitstatus.TERMINATED


class NoSpace(StackoError):
    """ENOSPC or EDQUOT: the filesystem, or the user's quota on it, is full."""


def os_error(e: OSError, where: str | None = None, doing: str | None = None) -> StackoError:
    """The StackoError for an OSError: ``doing`` (e.g. "cannot write PATH", its
    path quoted), or else the file(s) it names, then the system's words for it, and a hint that
    says what to do about this errno; where is the state root (or the
    directory) whose filesystem the hint names.  The one place that words
    system errors, for the top-level handler and for the code that knows more."""
    from stacko.quoting import quote   # here: most commands never fail
    reason = e.strerror or str(e)
    if doing is None:
        names = [n for n in (e.filename, getattr(e, "filename2", None)) if n is not None]
        doing = " -> ".join(quote(os.fsdecode(n) if isinstance(n, bytes) else str(n))
                            for n in names)
    message = f"{doing}: {reason}" if doing else reason
    fs = f"the filesystem of {quote(where)}" if where else "the filesystem"
    hints = {
        errno.ENOSPC: f"{fs} is full; delete unused images or instances (`stacko df` "
                      "shows what is reclaimable) or make room on it",
        errno.EDQUOT: f"the disk quota on {fs} is used up; delete unused images or "
                      "instances (`stacko df` shows what is reclaimable) or raise the quota",
        errno.EROFS: f"{fs} is mounted read-only; remount it read-write "
                     "(`mount -o remount,rw` on its mount point) or choose another --root",
        errno.EACCES: "commands that change state need root; otherwise check the owner "
                      "and mode of the path and of the directories above it",
        errno.EIO: "the disk failed to read or write; check it (dmesg)",
        errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
        errno.ENFILE: "the system has too many open files; retry when fewer are open",
    }
    hints[errno.EPERM] = hints[errno.EACCES]
    hint = hints.get(e.errno or 0, "`stacko check` reports anything the command left behind")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(message, hint)
    return StackoError(message, hint)

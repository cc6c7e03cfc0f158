"""The one exception tree of stacko.

Every expected failure is a StackoError: the CLI prints ``stacko: error: …``
(and the hint) on stderr and exits with ``exit_code``.  Anything else is a bug.
"""
from __future__ import annotations



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


class Interrupted(StackoError):
    """SIGTERM arrived: raised so that ExitStack cleanups run."""

    exit_code = 143       # 128 + SIGTERM, as shells report it: exitstatus.TERMINATED

"""A cgroup of its own for an admin's check (cutover-stackpoint --check).

A process group ends what stays in it, but a child that calls setsid, or
double-forks into a session of its own, leaves the group.  A cgroup cannot be
left that way: whatever a process starts is born in its cgroup, and only a
write to another cgroup's cgroup.procs moves it, which no daemon does by
accident.  So where cgroup v2 is usable (a cgroup2 mount, writable, and we
are root), a check runs in a new child cgroup of stacko's own cgroup, with no
controllers (none are needed to list or kill its processes); when the check
ends, everything in it is killed and the cgroup removed.  Elsewhere (cgroup v1
only, a read-only /sys/fs/cgroup in a container, not root) create() gives
None and the caller ends the process group as before.

Only files under the cgroup2 mount are read and written: no external command.
"""
from __future__ import annotations

import os
import time

PREFIX = "stacko-check-"      # + the check's random STACKO_CHECK_ID


def _cgroup2_mounts() -> list[tuple[str, str]]:
    """(mount point, root within the hierarchy) of each writable cgroup2 mount:
    /sys/fs/cgroup on a unified system, /sys/fs/cgroup/unified on a hybrid one."""
    from stacko import mounttable
    found = [(m.mount_point, m.root) for m in mounttable.mounts()
             if m.fstype == "cgroup2" and "ro" not in m.mount_options.split(",")]
    return sorted(found, key=lambda m: m[0] != "/sys/fs/cgroup")


def _directory(path: str) -> str | None:
    """The directory of the cgroup at path (as /proc/PID/cgroup names it)."""
    for mount_point, root in _cgroup2_mounts():
        root = root.rstrip("/")
        if path == root or path.startswith(root + "/"):
            directory = mount_point.rstrip("/") + path[len(root):]
            if os.path.isdir(directory):
                return directory
    return None


def own_cgroup() -> str | None:
    """The directory of this process's cgroup v2, if there is a usable one."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::/")), None)
    return _directory(path) if path is not None else None


def find(name: str) -> str | None:
    """The directory of the cgroup called name, anywhere in the hierarchy (a check's
    cgroup left by a stacko that was killed: its cgroup was the killed one's)."""
    for mount_point, _ in _cgroup2_mounts():
        for directory, subdirs, _files in os.walk(mount_point):
            if name in subdirs:
                return os.path.join(directory, name)
    return None


class CheckCgroup:
    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls, name: str) -> CheckCgroup | None:
        """A new child cgroup of our own, or None where cgroups are not usable."""
        if os.geteuid() != 0:
            return None
        parent = own_cgroup()
        if parent is None:
            return None
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
        except OSError:       # EROFS, EACCES, ENOSPC (cgroup.max.descendants) …
            return None
        return cls(path)

    def join(self) -> None:
        """Move the calling process into the cgroup: the check's child calls this
        before exec, so that nothing it starts is ever outside."""
        fd = os.open(os.path.join(self.path, "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def _tree(self, bottom_up: bool = False) -> list[str]:
        """The cgroup and its descendants: a check run as root may make children
        of its cgroup and move processes there; they are the check's all the same."""
        found = [self.path]
        for directory, subdirs, _files in os.walk(self.path):
            found += [os.path.join(directory, d) for d in subdirs]
        return found[::-1] if bottom_up else found

    def pids(self) -> list[int]:
        """Every process in the cgroup or below it."""
        pids = []
        for directory in self._tree():
            try:
                with open(os.path.join(directory, "cgroup.procs"), encoding="ascii") as f:
                    pids += [int(p) for p in f.read().split()]
            except (OSError, ValueError):
                continue
        return pids

    def signal(self, signum: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL everything in it and below.  cgroup.kill (Linux 5.14) does it at
        once, forks in flight included; before that, freeze it (so that nothing forks
        meanwhile; a frozen process still dies of SIGKILL) and kill pid by pid until
        it is empty.  Both act on the descendants too."""
        import signal
        if self._write("cgroup.kill", "1"):
            return
        frozen = self._write("cgroup.freeze", "1")
        for _ in range(200):
            if not self.pids():
                break
            self.signal(signal.SIGKILL)
            time.sleep(0.01)
        if frozen:
            self._write("cgroup.freeze", "0")

    def wait_empty(self, timeout: float) -> bool:
        """Whether every process in it is gone (killed ones take a moment to let go
        of their files) within timeout seconds."""
        end = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)
        return True

    def remove(self) -> bool:
        """Remove the cgroup, its descendants first (rmdir of a cgroup with
        children is EBUSY)."""
        for directory in self._tree(bottom_up=True):
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError:       # EBUSY: a process that would not die (D state)
                return False
        return True

    def _write(self, name: str, value: str) -> bool:
        try:
            fd = os.open(os.path.join(self.path, name), os.O_WRONLY)
        except OSError:
            return False
        try:
            os.write(fd, value.encode())
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

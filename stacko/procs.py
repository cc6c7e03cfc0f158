"""Which processes hold a path: the check behind every "busy" message."""
from __future__ import annotations

import os

from stacko.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable


@record
class Holder:
    pid: int
    command: str


def _inside(path: str, prefix: str) -> bool:
    """Whether path is the mount point (prefix less its slash) or lies under it."""
    path = path.removesuffix(" (deleted)")
    return path == prefix[:-1] or path.startswith(prefix)


def holders(mount_point: str | None = None, device: int | None = None,
            same: Callable[[str, int], bool] | None = None) -> list[Holder]:
    """Processes whose cwd, root, executable, open files or mapped files lie under
    mount_point (by path) or on device (by device number).

    The device number is how a detached mount, which has no path any more, is
    found: overlayfs gives all its files the device number of its own superblock
    when its layers share one filesystem, as stacko's layers under the root do.
    But the numbers of such anonymous superblocks are handed out again, lowest
    free first, as soon as one is freed: ``same(path, inode)``, when given, says
    whether a file found on device (its path as /proc shows it, relative to the
    root of a detached mount; its inode number) is one of the mount looked for.
    """
    prefix = mount_point.rstrip("/") + "/" if mount_point is not None else None
    wanted = f"{os.major(device):02x}:{os.minor(device):02x}" if device is not None else None

    def by_path(path: str) -> bool:
        return prefix is not None and _inside(path, prefix)

    found: list[Holder] = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        base = f"/proc/{entry}"
        if _holds(base, by_path, device, wanted, same):
            found.append(Holder(int(entry), _command(base)))
    return sorted(found, key=lambda h: h.pid)


def device_holders(device: int, same: Callable[[str, int], bool] | None = None
                   ) -> list[Holder]:
    return holders(device=device, same=same)


def _holds(base: str, by_path: Callable[[str], bool], device: int | None,
           wanted: str | None, same: Callable[[str, int], bool] | None = None) -> bool:
    links = [f"{base}/cwd", f"{base}/root", f"{base}/exe"]
    try:
        links += [f"{base}/fd/{fd}" for fd in os.listdir(f"{base}/fd")]
    except OSError:
        pass
    for link in links:
        try:
            target = os.readlink(link)
            if by_path(target):
                return True
            if device is not None:
                st = os.stat(link)
                if st.st_dev == device and (same is None or same(target, st.st_ino)):
                    return True
        except OSError:
            continue
    try:
        with open(f"{base}/maps", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(None, 5)     # address perms offset dev inode path
                if len(fields) < 6:
                    continue
                path = fields[5].rstrip("\n")
                if by_path(path) or (fields[3] == wanted and (
                        same is None or not fields[4].isdigit() or same(path, int(fields[4])))):
                    return True
    except OSError:
        pass
    return False


def describe(holders: list[Holder]) -> str:
    return ("process" + ("es " if len(holders) > 1 else " ")
            + ", ".join(f"{h.pid} ({h.command})" for h in holders))


def _command(base: str) -> str:
    try:
        with open(f"{base}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"

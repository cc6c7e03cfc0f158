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


def holders(mount_point: str | None = None, device: int | None = None) -> list[Holder]:
    """Processes whose cwd, root, executable, open files or mapped files lie under
    mount_point (by path) or on device (by device number).

    The device number is how a detached mount, which has no path any more, is
    found: overlayfs gives all its files the device number of its own superblock
    when its layers share one filesystem, as stacko's layers under the root do.
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
        if _holds(base, by_path, device, wanted):
            found.append(Holder(int(entry), _command(base)))
    return sorted(found, key=lambda h: h.pid)


def device_holders(device: int) -> list[Holder]:
    return holders(device=device)


def _holds(base: str, by_path: Callable[[str], bool], device: int | None,
           wanted: str | None) -> bool:
    links = [f"{base}/cwd", f"{base}/root", f"{base}/exe"]
    try:
        links += [f"{base}/fd/{fd}" for fd in os.listdir(f"{base}/fd")]
    except OSError:
        pass
    for link in links:
        try:
            if by_path(os.readlink(link)):
                return True
            if device is not None and os.stat(link).st_dev == device:
                return True
        except OSError:
            continue
    try:
        with open(f"{base}/maps", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(None, 5)     # address perms offset dev inode path
                if len(fields) == 6 and (fields[3] == wanted or by_path(fields[5].rstrip("\n"))):
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

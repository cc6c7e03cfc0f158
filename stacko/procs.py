"""Which processes hold a path: the check behind every "busy" message."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str


def _inside(path: str, mount_point: str, prefix: str) -> bool:
    path = path.removesuffix(" (deleted)")
    return path == mount_point or path.startswith(prefix)


def holders(mount_point: str, device: Optional[int] = None) -> List[Holder]:
    """Processes whose cwd, root, open files or mapped files lie under mount_point.

    A link is counted by its path and, when device is given, by the device
    number of the file it points to (which survives a lazy unmount).
    """
    prefix = mount_point.rstrip("/") + "/"
    found: List[Holder] = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        base = f"/proc/{entry}"
        if _holds(base, mount_point, prefix, device):
            found.append(Holder(int(entry), _command(base)))
    return sorted(found, key=lambda h: h.pid)


def _holds(base: str, mount_point: str, prefix: str, device: Optional[int]) -> bool:
    links = [f"{base}/cwd", f"{base}/root", f"{base}/exe"]
    try:
        links += [f"{base}/fd/{fd}" for fd in os.listdir(f"{base}/fd")]
    except OSError:
        pass
    for link in links:
        try:
            if _inside(os.readlink(link), mount_point, prefix):
                return True
            if device is not None and os.stat(link).st_dev == device:
                return True
        except OSError:
            continue
    try:
        with open(f"{base}/maps", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(None, 5)
                if len(fields) == 6 and _inside(fields[5].rstrip("\n"), mount_point, prefix):
                    return True
    except OSError:
        pass
    return False


def device_holders(device: int) -> List[Holder]:
    """Processes whose cwd, root, executable, open files or mapped files lie on
    device: how a detached mount, which has no path any more, is found.

    overlayfs gives all its files the device number of its own superblock when
    its layers share one filesystem, as stacko's layers under the root do.
    """
    wanted = f"{os.major(device):02x}:{os.minor(device):02x}"
    found: List[Holder] = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        base = f"/proc/{entry}"
        if _on_device(base, device, wanted):
            found.append(Holder(int(entry), _command(base)))
    return sorted(found, key=lambda h: h.pid)


def _on_device(base: str, device: int, wanted: str) -> bool:
    links = [f"{base}/cwd", f"{base}/root", f"{base}/exe"]
    try:
        links += [f"{base}/fd/{fd}" for fd in os.listdir(f"{base}/fd")]
    except OSError:
        pass
    for link in links:
        try:
            if os.stat(link).st_dev == device:
                return True
        except OSError:
            continue
    try:
        with open(f"{base}/maps", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(None, 5)     # address perms offset dev inode path
                if len(fields) == 6 and fields[3] == wanted:
                    return True
    except OSError:
        pass
    return False


def describe(holders: List[Holder]) -> str:
    return ("process" + ("es " if len(holders) > 1 else " ")
            + ", ".join(f"{h.pid} ({h.command})" for h in holders))


def _command(base: str) -> str:
    try:
        with open(f"{base}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return "?"

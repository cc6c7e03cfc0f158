"""Mount guarding: what must be true before a stackpoint is mounted, switched or
unmounted, and the refusals when it is not.

A stackpoint's directory must be safe to mount on; an instance is never
mounted twice (not where another stackpoint shows it, and not while an
earlier, lazily detached mount of it is still held by processes: it still
writes the instance's upper layer); and nothing changes a stackpoint whose
checked cutover is being checked by another command.
"""
from __future__ import annotations

import os
import time

from stacko import mounttable, overlay
from stacko.errors import HeldByProcesses, StackoError, StackpointBusy, UsageError
from stacko.records import DetachedMount, Instance, Stackpoint, replace
from stacko.state import Store

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable


def checked_dir(store: Store, point: Stackpoint) -> str:
    """The stackpoint's directory, for a command that mounts or unmounts there.

    The kernel names a mount point by its resolved path, and the directory was
    resolved when the stackpoint was made: if it resolves elsewhere now (a moved
    directory, a symlink put in its path), the mount there would not be found,
    and a second overlay would be stacked on the same upper layer.  Refuse."""
    directory = store.stackpoint_dir(point)
    resolved = os.path.realpath(directory)
    if resolved != directory:
        raise StackpointBusy(
            f"the directory of stackpoint {point.name!r} was {directory} and now resolves "
            f"to {resolved} (a moved directory or a symlink in its path)",
            hint=f"put the directory back at {directory}; until then `umount {resolved}` "
                 "unmounts what is mounted there")
    return directory


def mounted_instance(store: Store, point: Stackpoint,
                     table: list[mounttable.Mount] | None = None) -> Instance | None:
    """The instance of point that the kernel has mounted at its directory, if any
    (the directory as it resolves now, which is how the kernel names mounts)."""
    directory = os.path.realpath(store.stackpoint_dir(point))
    m = mounttable.find_mount(directory, table)
    if m is None:
        return None
    upper = m.option("upperdir") if m.fstype == "overlay" else None
    for inst in point.instances:
        if upper in (inst.layer, store.layer_path(inst.layer)):    # mount(8) or new API
            return inst
    raise StackpointBusy(f"something else is mounted at {directory} "
                         f"({m.fstype} from {m.source})",
                         hint=f"unmount it with `umount {directory}` first")


def _is_instance(store: Store, m: mounttable.Mount, inst: Instance) -> bool:
    return m.fstype == "overlay" and \
        m.option("upperdir") in (inst.layer, store.layer_path(inst.layer))


def refuse_if_mounted_elsewhere(store: Store, point: Stackpoint, inst: Instance,
                                table: list[mounttable.Mount] | None = None) -> None:
    """Two overlays must never share an upper layer: whatever the records say,
    the mount table tells whether this instance's layer is mounted anywhere."""
    users = mounttable.layer_users(inst.layer, store.layers_dir, store.work_dir, table)
    if users:
        raise StackpointBusy(
            f"the instance of {inst.image!r} of stackpoint {point.name!r} is mounted at "
            f"{users[0].mount_point} already",
            hint="two mounts must never write one layer: unmount that one first")


def _held(store: Store, point: Stackpoint, record: DetachedMount,
          table: list[mounttable.Mount]) -> str:
    """Who still holds an instance's detached mount: "" when nobody does."""
    from stacko import procs
    if record.boot_id != overlay.boot_id():
        return ""            # rebooted since: that mount is gone
    inst = point.instance(record.image)
    for m in table:
        if overlay.device_number(m) == record.device:
            # The same overlay, still attached elsewhere (a bind mount of the
            # stackpoint), or a new mount that reuses a freed device number.
            if inst is not None and m.fstype == "overlay" and \
                    m.option("upperdir") in (inst.layer, store.layer_path(inst.layer)):
                return f"a mount at {m.mount_point}"
            return ""
    same = _file_of(store, inst) if inst is not None else None
    found = [h for h in procs.device_holders(record.device, same)
             if not _reused_in_namespace_of(h.pid, record.device, store, inst)]
    return procs.describe(found) if found else ""


def _file_of(store: Store, inst: Instance) -> Callable[[str, int], bool]:
    """Whether a file held on the detached mount's device number can be one of
    that mount's: its path (relative to the detached mount's root, as /proc
    shows it) names, in the instance's upper layer or one of its image's layers,
    a file of that inode number (overlayfs shows the inode numbers of the
    layers' files when they share a filesystem).  Another filesystem that got
    the device number once ours was gone (a tmpfs, another root's overlay still
    being set up by fsmount, or detached in another namespace) holds other
    files.  A deleted file cannot be told apart: it counts as ours."""
    layers: list[str] = []

    def same(path: str, inode: int) -> bool:
        if path.endswith(" (deleted)") or not path.startswith("/"):
            return True
        if not layers:          # read only once a file is found on the device: rare
            try:
                from stacko import images      # here: a listing does without it
                lowers = [i.layer for i in images.stack_of(store.load_images(), inst.image)]
            except StackoError:
                lowers = []
            layers.extend(store.layer_path(layer) for layer in [inst.layer] + lowers)
        for layer in layers:
            try:
                if os.lstat(os.path.join(layer, path.lstrip("/"))).st_ino == inode:
                    return True
            except (OSError, ValueError):
                continue
        return False
    return same


def _reused_in_namespace_of(pid: int, device: int, store: Store, inst: Instance | None) -> bool:
    """Whether pid's files on device belong to another filesystem that is mounted
    in pid's own mount namespace: device numbers are freed with a superblock and
    soon handed to the next one, maybe in a namespace whose table we cannot see.
    Our detached overlay is in no namespace's table, unless a copy of it is still
    attached there (then its upperdir is this instance's layer)."""
    try:
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            table = mounttable.parse_mountinfo(f.read())
    except OSError:
        return True          # it has exited since: it holds nothing
    for m in table:
        if overlay.device_number(m) == device:
            return not (inst is not None and m.fstype == "overlay" and
                        m.option("upperdir") in (inst.layer, store.layer_path(inst.layer)))
    return False


GRACE = (0.05, 0.1, 0.2, 0.4)     # seconds between the checks before a refusal


def _refuse_if_held(store: Store, point: Stackpoint, image: str, action: str) -> Stackpoint:
    """Refuse to mount (or delete) an instance whose earlier, detached mount is
    still held; returns point without the records of mounts nobody holds any more."""
    if not point.detached:
        return point
    table = mounttable.mounts()
    keep = []
    for detached in point.detached:
        holders = _held(store, point, detached, table)
        for delay in GRACE if holders and detached.image == image else ():
            time.sleep(delay)    # a reader that had a file open at the switch closes it
            holders = _held(store, point, detached, table)
            if not holders:
                break
        if holders and detached.image == image:
            raise HeldByProcesses(
                f"{action}: the instance of {image!r} of stackpoint {point.name!r} is still "
                f"mounted, detached from {store.stackpoint_dir(point)} (by a gapless switch "
                f"or a lazy unmount) but used by {holders}",
                hint="two mounts must never write one upper layer: stop those processes "
                     "(or let them close the old files), then try again")
        if holders:
            keep.append(detached)
    return replace(point, detached=tuple(keep))


def _check_path(store: Store, points: dict[str, Stackpoint], path: str) -> str:
    from stacko import validate
    directory = os.path.realpath(os.path.abspath(path))
    problem = validate.path_problem(directory, store.root)     # the rules records obey too
    if problem:
        raise UsageError(problem, hint="choose a directory outside the state root")
    from stacko.quoting import quote
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise UsageError(f"{quote(directory)} is not a directory")
    m = mounttable.find_mount(directory)
    if m is not None:
        # /proc, /dev, a disk: the overlay would hide it, and unmounting the
        # stackpoint would not give it back to whoever uses it.
        raise UsageError(f"{quote(directory)} is a mount point ({m.fstype} from {m.source})",
                         hint="choose an empty directory that nothing is mounted on")
    for other in points.values():
        theirs = store.stackpoint_dir(other)
        if directory == theirs or directory.startswith(theirs + "/") \
                or theirs.startswith(directory + "/"):
            raise UsageError(f"{quote(directory)} overlaps the directory of stackpoint "
                             f"{other.name!r} ({quote(theirs)})")
    return directory

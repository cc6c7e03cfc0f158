"""check's findings on the mount table: each stackpoint's and edit mount against
its records, mounts of layers no record names, checked cutovers whose command
died, each with its repair.
"""
from __future__ import annotations

import contextlib
import os

from stacko import guard, mounttable, overlay, stackpoints
from stacko.errors import StackoError
from stacko.records import Image, Instance, Stackpoint
from stacko.state import Store
from stacko.checkfiles import Problem, is_empty, listdir, mount_layers


def instance_of_mount(store: Store, point: Stackpoint, m: mounttable.Mount) -> Instance | None:
    upper = m.option("upperdir") if m.fstype == "overlay" else None
    for inst in point.instances:
        if upper in (inst.layer, store.layer_path(inst.layer)):
            return inst
    return None


def stackpoint_mounts(store: Store, images: dict[str, Image], points: dict[str, Stackpoint],
                      table: list[mounttable.Mount]) -> list[Problem]:
    problems = []
    for name in sorted(points):
        point = points[name]
        if point.checking is not None:
            continue      # being checked, or interrupted_checks() undoes it
        directory = store.stackpoint_dir(point)
        resolved = os.path.realpath(directory)
        if resolved != directory:
            problems.append(Problem(
                f"stackpoint {name!r}: its directory was {directory} and now resolves to "
                f"{resolved}; stacko refuses to mount or unmount it there",
                cannot=f"put the directory back at {directory}"))
            continue
        stacked = mounttable.stacked_at(directory, table)
        if not stacked:
            continue
        top = stacked[-1]
        inst = instance_of_mount(store, point, top)
        if inst is None:
            problems.append(Problem(
                f"stackpoint {name!r}: something else is mounted at {directory} "
                f"({top.fstype} from {top.source})",
                cannot=f"not stacko's mount; unmount it with `umount {directory}`"))
        elif inst.image != point.current or len(stacked) > 1:
            what = (f"has its instance of {inst.image!r} mounted, but its current instance "
                    f"is of {point.current!r}" if inst.image != point.current else
                    f"has {len(stacked)} mounts stacked at {directory}")
            problems.append(Problem(f"stackpoint {name!r} {what} (an interrupted switch)",
                                    lambda point=point: remount_current(store, images, point)))
    return problems


def interrupted_checks(store: Store, points: dict[str, Stackpoint]) -> list[Problem]:
    """Checked cutovers whose command died during the check: undone (see checked.py)."""
    from stacko import events
    problems = []
    for name in sorted(points):
        pending = points[name].checking
        if pending is None or events.check_alive(pending):
            continue
        on = (f"; it is on {pending.image!r}, which never passed its check"
              if points[name].current == pending.image else "")
        problems.append(Problem(
            f"stackpoint {name!r}: the checked cutover to {pending.image!r} was interrupted "
            f"during its check (process {pending.pid} is gone){on}",
            lambda name=name: undo_check(store, name)))
    return problems


def undo_check(store: Store, name: str) -> str:
    point = stackpoints.get(store.load_stackpoints(), name)
    pending = point.checking
    assert pending is not None
    if guard.mounted_instance(store, point) is not None:
        overlay.require_root("check --repair")
    stackpoints.undo_interrupted_check(store, name, mount=False)
    if point.current != pending.image:
        return "forgot the record: the stackpoint had moved on since"
    if point.instance(pending.previous) is None:
        return (f"forgot the record; nothing to fall back to: its instance of "
                f"{pending.previous!r} is gone")
    return f"fell back to {pending.previous!r}, as the failed check would have"


def remount_current(store: Store, images: dict[str, Image], point: Stackpoint) -> str:
    """Unmount what is not the current instance, then mount the current one."""
    overlay.require_root("check --repair")
    directory = store.stackpoint_dir(point)
    done = []
    for _ in range(16):
        stacked = mounttable.stacked_at(directory, mounttable.mounts())
        if not stacked:
            from stacko import switch
            switch._mount(store, images, point, point.current_instance())
            done.append(f"mounted its current instance of {point.current!r}")
            break
        inst = instance_of_mount(store, point, stacked[-1])
        if inst is None:
            raise StackoError(f"something else is mounted at {directory}")
        if inst.image == point.current and len(stacked) == 1:
            break
        overlay.umount(directory)
        done.append(f"unmounted its instance of {inst.image!r}")
    return ", then ".join(done) or "nothing left to do"


def edit_mounts(store: Store, images: dict[str, Image],
                table: list[mounttable.Mount]) -> list[Problem]:
    problems = []
    for m in table:
        if os.path.dirname(m.mount_point) != store.edit_dir:
            continue
        name = os.path.basename(m.mount_point)
        if name not in images:
            problems.append(Problem(f"stale mount at {m.mount_point}: no image {name!r}",
                                    lambda m=m: unmount(m.mount_point)))
        else:
            mode = "read-only" if m.read_only else "for editing"
            problems.append(Problem(
                f"image {name!r} is open {mode} at {m.mount_point} "
                f"(edit-image without close-image)",
                lambda m=m: unmount(m.mount_point) + " (as close-image does)"))
    mounted = {m.mount_point for m in table}
    for name in listdir(store.edit_dir):
        path = store.edit_path(name)
        if path not in mounted and is_empty(path):
            problems.append(Problem(f"leftover empty directory {path}",
                                    lambda path=path: remove_empty(path)))
    return problems


def unmount(path: str) -> str:
    overlay.require_root("check --repair")
    overlay.umount(path)
    with contextlib.suppress(OSError):
        os.rmdir(path)
    return f"unmounted {path}"


def remove_empty(path: str) -> str:
    os.rmdir(path)
    return f"removed {path}"


def stale_mounts(store: Store, named: dict[str, str],
                 table: list[mounttable.Mount]) -> list[Problem]:
    """Overlay mounts of layers that no record names (or under tmp/)."""
    problems = []
    for m in table:
        if os.path.dirname(m.mount_point) == store.edit_dir:
            continue          # edit_mounts() says what is wrong with those
        unnamed = sorted(layer for layer in mount_layers(store, m) if layer not in named)
        if unnamed:
            problems.append(Problem(
                f"stale mount at {m.mount_point}: it uses layer"
                f"{'s' if len(unnamed) > 1 else ''} {', '.join(unnamed)} that no record names",
                lambda m=m: unmount(m.mount_point)))
        elif m.mount_point.startswith(store.tmp_dir + "/"):
            problems.append(Problem(f"stale mount at {m.mount_point}",
                                    lambda m=m: unmount(m.mount_point)))
    return problems

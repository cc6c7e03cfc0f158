"""Stackpoints: named directories that show one instance of an image stack.

Every switch (cutover, fallback, set) runs the same steps on an ExitStack so
that a failure at any step puts back what the earlier steps did: create the new
instance's layer, unmount the old instance, record, mount the new one.  Killed
between two steps, the state on disk is either the old or the new stackpoint,
unmounted at worst, and mount-stackpoint finishes the job.
"""
from __future__ import annotations

import os
import time

from stacko import images as images_mod
from stacko import events, overlay
from stacko.errors import (AlreadyExists, HeldByProcesses, ImageNotFound, InstanceNotFound,
                           StackoError, StackpointBusy, StackpointNotFound, UsageError)
from stacko.layers import remove_layer
from stacko.pending import back_from_check, interrupted, refuse_if_checking, undone
from stacko.records import (DetachedMount, Image, Instance, Stackpoint, Tentative, check_name,
                            record, replace, utc_time)
from stacko.state import Store, locked

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    import contextlib
    from collections.abc import Callable


def get(points: dict[str, Stackpoint], name: str) -> Stackpoint:
    check_name(name, "stackpoint name")
    try:
        return points[name]
    except KeyError:
        from stacko.suggest import did_you_mean
        raise StackpointNotFound(f"no stackpoint named {name!r}", hint=did_you_mean(
            name, points, "`stacko list-stackpoints` shows the stackpoints")) from None


class OrderHint:
    """A lookup that fails because POINT and IMAGE were given the other way round
    gets a hint saying so (new_point: POINT is a name not made yet).  A class,
    not a contextlib.contextmanager: see rootlock.Locked."""

    def __init__(self, images: dict[str, Image], points: dict[str, Stackpoint], name: str,
                 image: str, command: str, new_point: bool = False) -> None:
        self.images, self.points, self.name, self.image = images, points, name, image
        self.command, self.new_point = command, new_point

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, e: BaseException | None, tb: object) -> None:
        name, image = self.name, self.image
        if isinstance(e, (ImageNotFound, StackpointNotFound)) and name in self.images \
                and image not in self.images and (self.new_point or image in self.points):
            what = "" if self.new_point else f"{image!r} is a stackpoint and "
            raise type(e)(e.message, hint=f"{what}{name!r} is an image: the order is POINT IMAGE, "
                                         f"`stacko {self.command} {image} {name}`") from None


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
                     table: list[overlay.Mount] | None = None) -> Instance | None:
    """The instance of point that the kernel has mounted at its directory, if any
    (the directory as it resolves now, which is how the kernel names mounts)."""
    directory = os.path.realpath(store.stackpoint_dir(point))
    m = overlay.find_mount(directory, table)
    if m is None:
        return None
    upper = m.option("upperdir") if m.fstype == "overlay" else None
    for inst in point.instances:
        if upper in (inst.layer, store.layer_path(inst.layer)):    # mount(8) or new API
            return inst
    raise StackpointBusy(f"something else is mounted at {directory} "
                         f"({m.fstype} from {m.source})",
                         hint=f"unmount it with `umount {directory}` first")


def _is_instance(store: Store, m: overlay.Mount, inst: Instance) -> bool:
    return m.fstype == "overlay" and \
        m.option("upperdir") in (inst.layer, store.layer_path(inst.layer))


def _new_instance(store: Store, images: dict[str, Image], point_name: str, image: str) -> Instance:
    images_mod.refuse_if_editing(store, images, image, f"make an instance of {image!r}")
    return Instance(image=image, layer=store.new_layer(), created=images_mod.now())


def refuse_if_mounted_elsewhere(store: Store, point: Stackpoint, inst: Instance,
                                table: list[overlay.Mount] | None = None) -> None:
    """Two overlays must never share an upper layer: whatever the records say,
    the mount table tells whether this instance's layer is mounted anywhere."""
    users = overlay.layer_users(inst.layer, store.layers_dir, store.work_dir, table)
    if users:
        raise StackpointBusy(
            f"the instance of {inst.image!r} of stackpoint {point.name!r} is mounted at "
            f"{users[0].mount_point} already",
            hint="two mounts must never write one layer: unmount that one first")


def _mount(store: Store, images: dict[str, Image], point: Stackpoint, inst: Instance,
           table: list[overlay.Mount] | None = None) -> str:
    """table: the mount table as the caller read it under the lock, with nothing
    mounted or unmounted since (None: read it now)."""
    directory = checked_dir(store, point)
    refuse_if_mounted_elsewhere(store, point, inst, table)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as e:     # FileExistsError: a file took the directory's place
        raise StackoError(f"cannot mount stackpoint {point.name!r} at {directory}: "
                          f"{'it is not a directory' if os.path.lexists(directory) else e.strerror}"
                          ) from None
    lowers = [i.layer for i in images_mod.stack_of(images, inst.image)]
    overlay.mount_overlay(directory, store.layers_dir, lowers, upper=inst.layer,
                          attrs=point.mount_attrs(),
                          work=os.path.relpath(store.work_path(inst.layer), store.layers_dir))
    return directory


def _replace_mount(store: Store, images: dict[str, Image], points: dict[str, Stackpoint],
                   new: Stackpoint, mounted: Instance, undo: contextlib.ExitStack) -> None:
    """The gapless switch: build new's overlay detached, record, tuck it beneath
    the mounted one, detach that one.  The directory shows the old tree until
    the last step and the new one from then on, never the empty directory."""
    directory = store.stackpoint_dir(new)
    top = overlay.find_mount(directory)
    assert top is not None, f"{directory} was mounted a moment ago"
    # Whoever holds files in the old mount keeps it, and it keeps writing that
    # instance's upper layer: recorded so that it is not mounted twice.
    record = DetachedMount(mounted.image, overlay.device_number(top), overlay.boot_id())
    new = replace(new, detached=new.detached + (record,))
    inst = new.current_instance()
    refuse_if_mounted_elsewhere(store, new, inst)
    lowers = [i.layer for i in images_mod.stack_of(images, inst.image)]
    with overlay.prepare_overlay(store.layers_dir, lowers, inst.layer,
                                 store.work_path(inst.layer), new.mount_attrs()) as prepared:
        store.save_stackpoints({**points, new.name: new})
        undo.callback(store.save_stackpoints, points)
        prepared.attach_beneath(directory)
    # Cannot fail short of a kernel bug (root, our namespace, MNT_DETACH never
    # EBUSY); had it failed, the new mount would stay tucked under the old one.
    overlay.detach_top(directory)


def _held(store: Store, point: Stackpoint, record: DetachedMount,
          table: list[overlay.Mount]) -> str:
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
                lowers = [i.layer for i in images_mod.stack_of(store.load_images(), inst.image)]
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
            table = overlay.parse_mountinfo(f.read())
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
    table = overlay.mounts()
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


def active_tentative(point: Stackpoint) -> Tentative | None:
    """The tentative cutover point is on, if any (a record left on another image
    than the current one is stale: nothing would ever use it)."""
    t = point.tentative
    return t if t is not None and t.image == point.current else None


def refuse_if_tentative(point: Stackpoint, action: str, deleting: str | None = None) -> None:
    """A tentative cutover (--tries N) is an update that has not proved itself.
    Until confirm-stackpoint or fallback-stackpoint decides it, refuse what would
    build on it or move away from it (cutover, set, commit: the unproven instance
    would go on the history, or into an image, as if it were a good one) and what
    would delete the instance it falls back to (deleting: that image).  Commands
    that touch neither keep the tentative state as it is."""
    t = active_tentative(point)
    if t is None:
        return
    previous = point.history[-1] if point.history else None
    if deleting is not None and deleting != previous:
        return
    tries = f"{t.tries_left} tr{'y' if t.tries_left == 1 else 'ies'} left"
    if deleting is not None:
        message = (f"{action}: the instance of {deleting!r} is what the tentative cutover of "
                   f"stackpoint {point.name!r} to {t.image!r} ({tries}) falls back to if it "
                   "is not confirmed")
    else:
        message = (f"{action}: stackpoint {point.name!r} is on a tentative cutover to "
                   f"{t.image!r} ({tries}) that is not confirmed yet")
    back = (f", `stacko fallback-stackpoint {point.name}` goes back to {previous!r}"
            if previous is not None else "")
    raise StackpointBusy(message, hint=f"decide it first: `stacko confirm-stackpoint "
                                       f"{point.name}` keeps {t.image!r}{back}")


def _check_path(store: Store, points: dict[str, Stackpoint], path: str) -> str:
    from stacko import validate
    directory = os.path.realpath(os.path.abspath(path))
    problem = validate.path_problem(directory, store.root)     # the rules records obey too
    if problem:
        raise UsageError(problem, hint="choose a directory outside the state root")
    from stacko.quoting import quote
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise UsageError(f"{quote(directory)} is not a directory")
    m = overlay.find_mount(directory)
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


@locked(exclusive=True)
def new_stackpoint(store: Store, name: str, image: str, path: str | None = None,
                   nodev: bool = False, nosuid: bool = False) -> Stackpoint:
    import contextlib
    check_name(name, "stackpoint name")
    images = store.load_images()
    points = store.load_stackpoints()
    with OrderHint(images, points, name, image, "new-stackpoint", new_point=True):
        images_mod.get(images, image)
    if name in points:
        raise AlreadyExists(f"stackpoint {name!r} exists already")
    directory = _check_path(store, points, path) if path is not None else None
    inst = _new_instance(store, images, name, image)
    point = Stackpoint(name=name, current=image, path=directory, instances=(inst,),
                       nodev=nodev, nosuid=nosuid)
    try:
        store.save_stackpoints({**points, name: point})
    except BaseException:
        remove_layer(store, inst.layer)
        raise
    with contextlib.suppress(OSError):
        os.makedirs(store.stackpoint_dir(point), mode=0o755, exist_ok=True)
    return point


@locked(exclusive=True)
def delete_stackpoint(store: Store, name: str) -> None:
    import contextlib
    points = store.load_stackpoints()
    point = get(points, name)
    refuse_if_checking(point, "delete-stackpoint")
    if mounted_instance(store, point) is not None:
        raise StackpointBusy(f"stackpoint {name!r} is mounted at {store.stackpoint_dir(point)}",
                             hint=f"run `stacko umount-stackpoint {name}` first")
    points = undo_if_interrupted(store, points, name, "delete-stackpoint")   # ends its leftovers
    point = get(points, name)
    for inst in point.instances:     # as mount, prune and delete-stackpoint-instance do
        _refuse_if_held(store, point, inst.image, "delete-stackpoint")
    table = overlay.mounts()
    for inst in point.instances:
        users = overlay.layer_users(inst.layer, store.layers_dir, store.work_dir, table)
        if users:
            raise StackpointBusy(
                f"cannot delete stackpoint {name!r}: its instance of {inst.image!r} is "
                f"mounted at {users[0].mount_point}",
                hint=f"unmount it first (`umount {users[0].mount_point}`)")
    rest = dict(points)
    del rest[name]
    store.save_stackpoints(rest)
    for inst in point.instances:
        remove_layer(store, inst.layer)
    if point.path is None:
        with contextlib.suppress(OSError):
            os.rmdir(store.stackpoint_dir(point))


@overlay.needs_root("mount-stackpoint")
@locked(exclusive=True)
def mount_stackpoint(store: Store, name: str) -> str:
    images = store.load_images()
    point = get(store.load_stackpoints(), name)
    checked_dir(store, point)
    if point.checking is not None and not events.check_alive(point.checking):
        return undo_interrupted_check(store, name, mount=True)
    # One read of the mount table for the whole command (on a host with
    # hundreds of mounts, each read costs milliseconds): stacko's own mounts
    # cannot change under the lock, and one made by hand could slip in after
    # any check anyway.
    table = overlay.mounts()
    mounted = mounted_instance(store, point, table)
    if mounted is not None and mounted.image == point.current:
        return store.stackpoint_dir(point)
    if mounted is not None:
        # A switch killed between recording the new instance and mounting it
        # left the old one mounted: finish it as the switch would have (the
        # record is already right, so only the mount changes).
        directory = store.stackpoint_dir(point)
        stacked = overlay.stacked_at(directory)
        if len(stacked) > 1 and _is_instance(store, stacked[-2], point.current_instance()):
            # Killed after the new mount went beneath the old one: detach the old.
            overlay.detach_top(directory)
            return directory
        points = store.load_stackpoints()
        _switch(store, images, points, point, None, mount=True, action="mount-stackpoint")
        return store.stackpoint_dir(point)
    if point.tentative is not None:
        return _boot_try(store, images, point)
    _refuse_if_held(store, point, point.current, "mount-stackpoint")
    # _refuse_if_held may have waited for a holder to let go: then read anew.
    return _mount(store, images, point, point.current_instance(),
                  table if not point.detached else None)


def _boot_try(store: Store, images: dict[str, Image], point: Stackpoint) -> str:
    """Mount a tentative stackpoint that was not mounted (a boot): use one try,
    or, with none left, fall back to the instance that was current before."""
    from stacko import run
    points = store.load_stackpoints()
    tentative = point.tentative
    assert tentative is not None
    if tentative.image != point.current:
        new = replace(point, tentative=None)     # moved on since (commit-stackpoint)
    elif tentative.tries_left > 0:
        new = replace(point, tentative=tentative._replace(tries_left=tentative.tries_left - 1))
    elif not point.history:
        # Its earlier instance was deleted: nothing to fall back to, and a boot must go on.
        run.log(f"stacko: warning: stackpoint {point.name!r}: the tentative cutover to "
                f"{tentative.image!r} was not confirmed, but there is no earlier instance "
                f"to fall back to; mounting {point.current!r}")
        new = events.add(replace(point, tentative=None), "boot-fallback", point.current,
                         point.current, "not confirmed, and no earlier instance to fall back to")
    else:
        new = None
    if new is not None:
        _refuse_if_held(store, new, new.current, "mount-stackpoint")
        # The try is used before the mount: a boot that dies mounting it has used it.
        store.save_stackpoints({**points, point.name: new})
        try:
            return _mount(store, images, new, new.current_instance())
        except BaseException:
            store.save_stackpoints(points)
            raise
    previous = point.history[-1]
    boots = f"{tentative.tries} boot{'s' if tentative.tries != 1 else ''}"
    new = replace(point, current=previous, history=point.history[:-1], tentative=None)
    new = events.add(new, "boot-fallback", point.current, previous,
                     f"the tentative cutover was not confirmed after {boots}")
    _switch(store, images, points, new, None, mount=True, action="mount-stackpoint")
    run.log(f"stacko: stackpoint {point.name!r}: the cutover to {point.current!r} was not "
            f"confirmed after {boots}; fell back to {previous!r}")
    return store.stackpoint_dir(point)


@locked(exclusive=True)
def undo_interrupted_check(store: Store, name: str, mount: bool, action: str = "") -> str:
    """Undo a checked cutover whose command died during its check: an update
    that never proved itself is not trusted, so the stackpoint goes back to how
    it was before (pending.back_from_check; the checked instance is kept), and
    what the check left running is ended.  The stackpoint ends mounted if it
    was, or if mount is true.  action: the command that undoes it on its way."""
    from stacko import run
    images = store.load_images()
    points = store.load_stackpoints()
    point = get(points, name)
    pending = point.checking
    assert pending is not None
    # First: the check's processes hold the stackpoint (and, once switched away,
    # the checked instance's detached mount).
    left = events.end_leftovers(pending)
    if left:
        run.log(f"stacko: ended what the interrupted check left running: process"
                f"{'es' if len(left) > 1 else ''} {', '.join(map(str, left))}")
    if point.current != pending.image or point.instance(pending.previous) is None:
        # Moved on since (by hand), or the earlier instance is gone: only forget.
        if point.current == pending.image:
            run.log(f"stacko: warning: stackpoint {name!r} stays on {pending.image!r}, whose "
                    f"check was interrupted: its instance of {pending.previous!r} is gone")
        new = events.add(replace(point, checking=None), "check-interrupted", point.current,
                         point.current, f"the check of {pending.image!r} was interrupted; "
                         "nothing to fall back to")
        store.save_stackpoints({**points, name: new})
        return mount_stackpoint(store, name) if mount else store.stackpoint_dir(point)
    directory = store.stackpoint_dir(point)
    stacked = overlay.stacked_at(directory)
    if len(stacked) > 1 and _is_instance(store, stacked[-2], point.current_instance()):
        overlay.detach_top(directory)     # killed inside the gapless switch: finish it first
    new = back_from_check(point, "check-interrupted",
                          f"the check `{pending.command}` was interrupted (process "
                          f"{pending.pid} died); fell back")
    _switch(store, images, points, new, None, mount=mount, action="undo of a checked cutover")
    run.log(undone(action, point, pending))
    return directory


def undo_if_interrupted(store: Store, points: dict[str, Stackpoint], name: str,
                        action: str) -> dict[str, Stackpoint]:
    """Before action changes stackpoint name (under the lock): undo its checked
    cutover if the command that ran the check died, so that nothing is built on
    an image that never passed its check.  Returns the stackpoints as they are."""
    if interrupted(get(points, name)) is None:
        return points
    undo_interrupted_check(store, name, mount=False, action=action)
    return store.load_stackpoints()


@overlay.needs_root("umount-stackpoint")
@locked(exclusive=True)
def umount_stackpoint(store: Store, name: str, lazy: bool = False) -> None:
    points = undo_if_interrupted(store, store.load_stackpoints(), name, "umount-stackpoint")
    point = get(points, name)
    directory = checked_dir(store, point)
    mounted = mounted_instance(store, point)
    if mounted is None:
        return
    refuse_if_checking(point, "umount-stackpoint")
    if not lazy:
        overlay.umount(directory)
        return
    # A lazily detached mount lives on while processes hold it, and it still
    # writes the instance's upper layer: record it, as a gapless switch does, so
    # that the instance is not mounted again (or committed) until they let go.
    top = overlay.find_mount(directory)
    assert top is not None, f"{directory} was mounted a moment ago"
    record = DetachedMount(mounted.image, overlay.device_number(top), overlay.boot_id())
    store.save_stackpoints({**points, name: replace(point, detached=point.detached + (record,))})
    try:
        overlay.umount(directory, lazy=True)
    except BaseException:
        store.save_stackpoints(points)
        raise


@locked(exclusive=False)
def stackpoint_dir(store: Store, name: str) -> str:
    return store.stackpoint_dir(get(store.load_stackpoints(), name))


@locked(exclusive=False)
def is_mounted(store: Store, name: str) -> bool:
    return mounted_instance(store, get(store.load_stackpoints(), name)) is not None


def _switch(store: Store, images: dict[str, Image], points: dict[str, Stackpoint],
            new: Stackpoint, created: Instance | None, mount: bool, action: str) -> None:
    """Move a stackpoint from its recorded state to new, or leave it as it was.

    A mounted stackpoint switches without a gap where the kernel can
    (MOVE_MOUNT_BENEATH, see _replace_mount); elsewhere it is unmounted, then
    mounted again, which fails while processes hold the old tree.
    """
    import contextlib
    from stacko import run
    old = points[new.name]
    refuse_if_checking(old, action)
    directory = store.stackpoint_dir(old)
    mounted = mounted_instance(store, old)
    if mount or mounted is not None:
        overlay.require_root(action)
        checked_dir(store, old)
    with contextlib.ExitStack() as undo:
        if created is not None:
            undo.callback(remove_layer, store, created.layer)
        new = _refuse_if_held(store, new, new.current, action)
        gapless = mounted is not None and mounted != new.current_instance() \
            and overlay.gapless_switch()
        why = overlay.why_not_gapless() if mounted is not None and not gapless \
            and mounted != new.current_instance() else ""
        if why:
            run.log(f"stacko: {action}: {why}: unmounting {directory}, then mounting it again")
        if mounted is not None:
            run.debug(f"{action}: switching {directory} "
                      + ("without a gap (new mount beneath the old, then the old detached)"
                         if gapless else "by unmount-then-mount"))
        if gapless:
            assert mounted is not None
            _replace_mount(store, images, points, new, mounted, undo)
        elif mounted is not None:
            overlay.umount(directory)
            undo.callback(_mount, store, images, old, mounted)
        if not gapless:
            store.save_stackpoints({**points, new.name: new})
            undo.callback(store.save_stackpoints, points)
            if mount or mounted is not None:
                _mount(store, images, new, new.current_instance())
        undo.pop_all()


@overlay.needs_root("cutover-stackpoint")
@locked(exclusive=True)
def cutover(store: Store, name: str, image: str, tries: int | None = None,
            check: str | None = None, action: str = "cutover", why: str = "") -> str:
    """tries: make it tentative (see _boot_try).  check: record that this process
    runs that check next (see checked.py), in the same write as the switch.
    action, why: the event's (update-stackpoint's own)."""
    images = store.load_images()
    points = store.load_stackpoints()
    with OrderHint(images, points, name, image, "cutover-stackpoint"):
        images_mod.get(images, image)
        point = get(points, name)
    # An earlier checked cutover died in its check: undo it first, so that this
    # one starts from the instance known to work.
    points = undo_if_interrupted(store, points, name, "cutover-stackpoint")
    point = get(points, name)
    if image == point.current:
        return mount_stackpoint(store, name)
    refuse_if_checking(point, "cutover-stackpoint")
    refuse_if_tentative(point, "cutover-stackpoint")
    inst = point.instance(image)
    created = None
    if inst is None:
        inst = created = _new_instance(store, images, name, image)
    try:
        # An existing instance keeps its place: a failed check leaves all as it was.
        new = replace((point if created is None else point.with_instance(inst)).switched_to(image),
                      checking=None,
                      tentative=None if tries is None else Tentative(image, tries, tries))
        reasons = ([why] if why else []) + ([f"tentative, {tries} tr{'ies' if tries != 1 else 'y'}"]
                   if tries is not None else []) + ([f"checked by `{check}`"] if check else [])
        new = events.add(new, action, point.current, image, "; ".join(reasons))
        if check is not None:
            new = replace(new, checking=replace(events.pending_check(point.current, image, check),
                                                history=point.history))
    except BaseException:
        if created is not None:
            remove_layer(store, created.layer)
        raise
    _switch(store, images, points, new, created, mount=True, action="cutover-stackpoint")
    return store.stackpoint_dir(point)


@overlay.needs_root("fallback-stackpoint")
@locked(exclusive=True)
def fallback(store: Store, name: str) -> str:
    images = store.load_images()
    points = store.load_stackpoints()
    point = get(points, name)
    if interrupted(point) is not None:
        # The undo is the fallback: back to the instance that was current before.
        undo_interrupted_check(store, name, mount=True, action="fallback-stackpoint")
        points = store.load_stackpoints()
        if get(points, name).current != point.current:
            return store.stackpoint_dir(point)
        point = get(points, name)
    if not point.history:
        raise StackoError(f"stackpoint {name!r} has no earlier instance to fall back to",
                          hint="`stacko list-stackpoints` shows its history")
    # Walking back: the present instance is kept, but not put on the history.
    new = replace(point, current=point.history[-1], history=point.history[:-1], tentative=None,
                  checking=None)
    new = events.add(new, "fallback", point.current, new.current, "fallback-stackpoint")
    _switch(store, images, points, new, None, mount=True, action="fallback-stackpoint")
    return store.stackpoint_dir(point)


@locked(exclusive=True)
def new_instance(store: Store, name: str, image: str) -> None:
    images = store.load_images()
    points = store.load_stackpoints()
    with OrderHint(images, points, name, image, "new-stackpoint-instance"):
        images_mod.get(images, image)
        point = get(points, name)
    if point.instance(image) is not None:
        raise AlreadyExists(f"stackpoint {name!r} has an instance of {image!r} already")
    points = undo_if_interrupted(store, points, name, "new-stackpoint-instance")
    point = get(points, name)
    inst = _new_instance(store, images, name, image)
    try:
        store.save_stackpoints({**points, name: point.with_instance(inst)})
    except BaseException:
        remove_layer(store, inst.layer)
        raise


def _instance(point: Stackpoint, image: str) -> Instance:
    check_name(image, "image name")
    inst = point.instance(image)
    if inst is None:
        from stacko.suggest import did_you_mean
        raise InstanceNotFound(f"stackpoint {point.name!r} has no instance of {image!r}",
                               hint=did_you_mean(image, [i.image for i in point.instances],
                                                 f"`stacko new-stackpoint-instance "
                                                 f"{point.name} {image}` makes one"))
    return inst


@locked(exclusive=True)
def set_instance(store: Store, name: str, image: str) -> None:
    images = store.load_images()
    points = store.load_stackpoints()
    with OrderHint(images, points, name, image, "set-stackpoint-instance"):
        point = get(points, name)
    _instance(point, image)
    points = undo_if_interrupted(store, points, name, "set-stackpoint-instance")
    point = get(points, name)
    if image == point.current:
        return
    refuse_if_checking(point, "set-stackpoint-instance")
    refuse_if_tentative(point, "set-stackpoint-instance")
    new = replace(point.switched_to(image), tentative=None, checking=None)
    new = events.add(new, "set", point.current, image, "set-stackpoint-instance")
    _switch(store, images, points, new, None, mount=False, action="set-stackpoint-instance")


@locked(exclusive=True)
def confirm(store: Store, name: str) -> bool:
    """Make a tentative cutover permanent; False when nothing was tentative."""
    points = undo_if_interrupted(store, store.load_stackpoints(), name, "confirm-stackpoint")
    point = get(points, name)
    tentative = point.tentative
    if tentative is None:
        return False
    used = tentative.tries - tentative.tries_left
    new = events.add(replace(point, tentative=None), "confirm", point.current, point.current,
                     f"confirmed after {used} of {tentative.tries} "
                     f"tr{'ies' if tentative.tries != 1 else 'y'}")
    store.save_stackpoints({**points, name: new})
    return True


@locked(exclusive=True)
def delete_instance(store: Store, name: str, image: str) -> None:
    points = store.load_stackpoints()
    with OrderHint(store.load_images(), points, name, image, "delete-stackpoint-instance"):
        point = get(points, name)
    _instance(point, image)
    points = undo_if_interrupted(store, points, name, "delete-stackpoint-instance")
    point = get(points, name)
    inst = _instance(point, image)
    refuse_if_checking(point, "delete-stackpoint-instance")
    refuse_if_tentative(point, "delete-stackpoint-instance", deleting=image)
    if image == point.current:
        raise StackoError(f"cannot delete the current instance ({image!r}) of stackpoint {name!r}",
                          hint="switch to another instance first, or delete the stackpoint")
    mounted = mounted_instance(store, point)
    if mounted is not None and mounted.image == image:
        raise StackpointBusy(f"the instance of {image!r} is mounted at {store.stackpoint_dir(point)}",
                             hint=f"run `stacko umount-stackpoint {name}` first")
    point = _refuse_if_held(store, point, image, "delete-stackpoint-instance")
    store.save_stackpoints({**points, name: point.without_instance(image)})
    remove_layer(store, inst.layer)


@record
class StackpointInfo:
    point: Stackpoint
    directory: str
    mounted: str | None     # the image whose instance is mounted

    def to_dict(self) -> dict:
        p = self.point
        return {"name": p.name, "dir": self.directory, "current": p.current,
                "mounted": self.mounted is not None, "mounted_image": self.mounted,
                "history": list(p.history),
                "instances": [{"image": i.image, "created": utc_time(i.created)}
                              for i in p.instances],
                "tentative": None if p.tentative is None or p.tentative.image != p.current
                else {"tries_left": p.tentative.tries_left, "tries": p.tentative.tries},
                "events": [e.to_dict() for e in p.events],
                "nodev": p.nodev, "nosuid": p.nosuid, "follows": p.follows,
                "checking": None if p.checking is None else
                {"image": p.checking.image, "previous": p.checking.previous,
                 "command": p.checking.command, "pid": p.checking.pid,
                 "started": p.checking.started, "running": events.check_alive(p.checking)}}


@locked(exclusive=False)
def list_stackpoints(store: Store) -> list[StackpointInfo]:
    points = store.load_stackpoints(strict=False)     # only shown: a bad record is listed
    table = overlay.mounts()
    infos = []
    for name in sorted(points):
        point = points[name]
        try:
            inst = mounted_instance(store, point, table)
        except StackpointBusy:
            inst = None
        infos.append(StackpointInfo(point, store.stackpoint_dir(point),
                                    inst.image if inst else None))
    return infos

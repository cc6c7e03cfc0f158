"""Stackpoints: named directories that show one instance of an image stack.

The commands on stackpoints (new, delete, mount, umount, cutover, fallback,
confirm, the listing). Their rooms: instances.py (new, set and delete
instances), guard.py (what must hold before a mount, a switch or an
unmount), switch.py (mounting an instance, and switching from one to another
so that a failure at any step puts back what the earlier steps did),
tentative.py (cutovers that have not proved themselves yet). Killed between
two steps of a switch, the state on disk is either the old or the new
stackpoint, unmounted at worst, and mount-stackpoint finishes the job.
"""
from __future__ import annotations

import os

from stacko import events, mounttable, overlay
from stacko.errors import (AlreadyExists, ImageNotFound, StackoError,
                           StackpointBusy, StackpointNotFound)
from stacko.guard import _check_path, _is_instance, _refuse_if_held, checked_dir, mounted_instance
from stacko.log import log
from stacko.names import check_name, utc_time
from stacko.pending import back_from_check, interrupted, refuse_if_checking, undone
from stacko.records import DetachedMount, Image, Instance, Stackpoint, Tentative, record, replace
from stacko.rootlock import remove_idle_lock
from stacko.state import Store, locked


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


def _new_instance(store: Store, images: dict[str, Image], point_name: str, image: str) -> Instance:
    from stacko import images as images_mod
    images_mod.refuse_if_editing(store, images, image, f"make an instance of {image!r}")
    return Instance(image=image, layer=store.new_layer(), created=images_mod.now())


@locked(exclusive=True)
def new_stackpoint(store: Store, name: str, image: str, path: str | None = None,
                   nodev: bool = False, nosuid: bool = False) -> Stackpoint:
    from stacko import images as images_mod
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
    table = mounttable.mounts()
    for inst in point.instances:
        users = mounttable.layer_users(inst.layer, store.layers_dir, store.work_dir, table)
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
    # update-stackpoint's lock of it; kept while an update of it runs, which
    # then finds no stackpoint.  Best effort: the stackpoint is gone already.
    with contextlib.suppress(OSError):
        remove_idle_lock(store.update_lock_path(name))


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
    table = mounttable.mounts()
    mounted = mounted_instance(store, point, table)
    if mounted is not None and mounted.image == point.current:
        return store.stackpoint_dir(point)
    if mounted is not None:
        # A switch killed between recording the new instance and mounting it
        # left the old one mounted: finish it as the switch would have (the
        # record is already right, so only the mount changes).
        directory = store.stackpoint_dir(point)
        stacked = mounttable.stacked_at(directory)
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


@locked(exclusive=True)
def undo_interrupted_check(store: Store, name: str, mount: bool, action: str = "") -> str:
    """Undo a checked cutover whose command died during its check: an update
    that never proved itself is not trusted, so the stackpoint goes back to how
    it was before (pending.back_from_check; the checked instance is kept), and
    what the check left running is ended.  The stackpoint ends mounted if it
    was, or if mount is true.  action: the command that undoes it on its way."""
    images = store.load_images()
    points = store.load_stackpoints()
    point = get(points, name)
    pending = point.checking
    assert pending is not None
    # First: the check's processes hold the stackpoint (and, once switched away,
    # the checked instance's detached mount).
    left = events.end_leftovers(pending)
    if left:
        log(f"stacko: ended what the interrupted check left running: process"
            f"{'es' if len(left) > 1 else ''} {', '.join(map(str, left))}")
    if point.current != pending.image or point.instance(pending.previous) is None:
        # Moved on since (by hand), or the earlier instance is gone: only forget.
        if point.current == pending.image:
            log(f"stacko: warning: stackpoint {name!r} stays on {pending.image!r}, whose "
                f"check was interrupted: its instance of {pending.previous!r} is gone")
        new = events.add(replace(point, checking=None), "check-interrupted", point.current,
                         point.current, f"the check of {pending.image!r} was interrupted; "
                         "nothing to fall back to")
        store.save_stackpoints({**points, name: new})
        return mount_stackpoint(store, name) if mount else store.stackpoint_dir(point)
    directory = store.stackpoint_dir(point)
    stacked = mounttable.stacked_at(directory)
    if len(stacked) > 1 and _is_instance(store, stacked[-2], point.current_instance()):
        overlay.detach_top(directory)     # killed inside the gapless switch: finish it first
    new = back_from_check(point, "check-interrupted",
                          f"the check `{pending.command}` was interrupted (process "
                          f"{pending.pid} died); fell back")
    _switch(store, images, points, new, None, mount=mount, action="undo of a checked cutover")
    log(undone(action, point, pending))
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
    top = mounttable.find_mount(directory)
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


@overlay.needs_root("cutover-stackpoint")
@locked(exclusive=True)
def cutover(store: Store, name: str, image: str, tries: int | None = None,
            check: str | None = None, action: str = "cutover", why: str = "") -> str:
    """tries: make it tentative (see _boot_try).  check: record that this process
    runs that check next (see checked.py), in the same write as the switch.
    action, why: the event's (update-stackpoint's own)."""
    from stacko import images as images_mod
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
    table = mounttable.mounts()
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


# The rooms a listing never enters, imported when a command first needs them:
# get-stackpoint-dir, is-stackpoint-mounted and list-stackpoints then start
# without images.py, switch.py and tentative.py (docs/startup.md).
def _mount(*args: object, **kwargs: object) -> str:
    from stacko import switch
    return switch._mount(*args, **kwargs)  # type: ignore[arg-type]


def _switch(*args: object, **kwargs: object) -> None:
    from stacko import switch
    switch._switch(*args, **kwargs)  # type: ignore[arg-type]


def _boot_try(store: Store, images: dict[str, Image], point: Stackpoint) -> str:
    from stacko import tentative
    return tentative._boot_try(store, images, point)


def refuse_if_tentative(point: Stackpoint, action: str, deleting: str | None = None) -> None:
    from stacko import tentative
    tentative.refuse_if_tentative(point, action, deleting)


def remove_layer(store: Store, layer: str) -> None:
    from stacko import layers
    layers.remove_layer(store, layer)

"""Mounting a stackpoint's instance, and switching a stackpoint from one
instance to another.

Every switch (cutover, fallback, set, a fallback at boot, the undo of a
check) runs the same steps on an ExitStack so that a failure at any step puts
back what the earlier steps did: create the new instance's layer, unmount the
old instance (or, where the backend can, build the new mount and tuck it
beneath the old one: see _replace_mount), record, mount the new one.
"""
from __future__ import annotations

import os

from stacko import images as images_mod
from stacko import mounttable, overlay
from stacko.errors import StackoError
from stacko.layers import remove_layer
from stacko.log import debug, log
from stacko.pending import refuse_if_checking
from stacko.records import DetachedMount, Image, Instance, Stackpoint, replace
from stacko.state import Store
from stacko.guard import (_refuse_if_held, checked_dir, mounted_instance,
                          refuse_if_mounted_elsewhere)

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    import contextlib


def _mount(store: Store, images: dict[str, Image], point: Stackpoint, inst: Instance,
           table: list[mounttable.Mount] | None = None) -> str:
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
    top = mounttable.find_mount(directory)
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


def _switch(store: Store, images: dict[str, Image], points: dict[str, Stackpoint],
            new: Stackpoint, created: Instance | None, mount: bool, action: str) -> None:
    """Move a stackpoint from its recorded state to new, or leave it as it was.

    A mounted stackpoint switches without a gap where the kernel can
    (MOVE_MOUNT_BENEATH, see _replace_mount); elsewhere it is unmounted, then
    mounted again, which fails while processes hold the old tree.
    """
    import contextlib
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
            log(f"stacko: {action}: {why}: unmounting {directory}, then mounting it again")
        if mounted is not None:
            debug(f"{action}: switching {directory} "
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

"""Removing a layer's data: the one way stacko deletes what a layer holds.

A layer goes only when no record names it, no mount lies beneath its
directories, no overlay (wherever mounted) uses it, and the record that
forgot it is on the disk.  This is policy over the files under the root
(state.py) and the kernel's mount table (mounttable.py), so it lives above
both, not in the store.
"""
from __future__ import annotations

from stacko import mounttable, validate
from stacko.errors import CorruptState, StackoError
from stacko.state import Store, remove_tree


def remove_layer(store: Store, layer: str) -> None:
    """Remove a layer's data; never follows into a mount beneath it.  Every
    caller forgets the layer first: one that a record still names (two
    records given one layer by a hand edit) is someone's data, kept."""
    if not validate.is_layer(layer):
        raise CorruptState(f"{layer!r} is not a layer id stacko makes; not removing it")
    owner = store.layer_owner(layer)
    if owner:
        raise CorruptState(f"layer {store.layer_path(layer)} is still {owner}'s; "
                           "not removing it",
                           hint="`stacko check` reports the records that share it")
    table = mounttable.mounts()
    for path in (store.work_path(layer), store.layer_path(layer)):
        busy = mounttable.mounts_under(path, table)
        if busy:
            raise StackoError(f"{path} has a mount beneath it ({busy[0].mount_point}); "
                              "not removing it")
    # Whatever the records say, a layer that a mount uses (maybe at a directory
    # moved since) is live data: never remove it beneath that mount.
    users = mounttable.layer_users(layer, store.layers_dir, store.work_dir, table)
    if users:
        raise StackoError(f"{store.layer_path(layer)} is in use by the overlay mounted at "
                          f"{users[0].mount_point}; not removing it",
                          hint=f"unmount it first (`umount {users[0].mount_point}`)")
    # The record that forgot the layer must be on the disk before its data goes:
    # else a power cut could bring back a record of a layer removed meanwhile.
    store.sync_records(f"not removing {store.layer_path(layer)}, which the records "
                       "may still name after a power cut",
                       "the data is kept, and `stacko check --repair` clears it later")
    for path in (store.work_path(layer), store.layer_path(layer)):
        remove_tree(path)
    from stacko import content     # here: it imports json, which a listing does without
    content.remove(store.root, layer)

"""check's findings on the files under the root: records against layer
directories, workdirs, interrupted commits, staging leftovers, content
manifests and metadata temporary files, each with its repair.
"""
from __future__ import annotations

import os
import stat

from stacko import images as images_mod
from stacko import guard, layers, mounttable, overlay
from stacko.errors import StackoError
from stacko.records import Image, Instance, Stackpoint, record, replace
from stacko.state import Store, remove_tree

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable


ORPHANS = "orphans"       # <root>/orphans/ID: unnamed layers that held files


@record
class Problem:
    text: str
    repair: Callable[[], str] | None = None   # returns what it did; raises if it could not
    cannot: str = ""                             # why there is no repair


def named_layers(images: dict[str, Image], points: dict[str, Stackpoint]) -> dict[str, str]:
    """Layer id -> what names it."""
    named = {i.layer: f"image {i.name!r}" for i in images.values()}
    for point in points.values():
        for inst in point.instances:
            named.setdefault(inst.layer, f"the instance of {inst.image!r} of stackpoint "
                                         f"{point.name!r}")
    return named


def listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def is_empty(path: str) -> bool:
    try:
        return not os.listdir(path)
    except OSError:
        return False


def interrupted_commits(store: Store, images: dict[str, Image],
                        points: dict[str, Stackpoint]) -> list[Problem]:
    from stacko import changes
    problems = []
    for point_name, image_name, layer in changes.interrupted_commits(images, points):
        problems.append(Problem(
            f"layer {store.layer_path(layer)} is both image {image_name!r}'s and an instance of "
            f"stackpoint {point_name!r} (an interrupted commit-stackpoint)",
            lambda p=point_name, i=image_name, l=layer: finish_commit(store, p, i, l)))
    return problems


def finish_commit(store: Store, point_name: str, image_name: str, layer: str) -> str:
    """Give the layer to the image for good: the stackpoint loses that instance and,
    if it was current, gets a fresh instance of the image (same files as before)."""
    images = store.load_images()
    points = store.load_stackpoints()
    point = points[point_name]
    old = next(i for i in point.instances if i.layer == layer)
    was_current = old.image == point.current
    directory = store.stackpoint_dir(point)
    mounted = guard.mounted_instance(store, point)
    if mounted is not None and mounted == old:
        overlay.require_root("check --repair")
        overlay.umount(directory)
    else:
        mounted = None
    new = point.without_instance(old.image)
    fresh = None
    if was_current:
        existing = new.instance(image_name)
        if existing is None:
            fresh = Instance(image=image_name, layer=store.new_layer(),
                             created=images_mod.now())
            new = new.with_instance(fresh)
        new = replace(new, current=image_name)
    try:
        store.save_stackpoints({**points, point_name: new})
    except BaseException:
        if fresh is not None:
            layers.remove_layer(store, fresh.layer)
        raise
    done = f"the instance of {old.image!r} became image {image_name!r}"
    if was_current:
        done += f"; stackpoint {point_name!r} is on an instance of {image_name!r}"
    if mounted is not None:
        from stacko import switch
        switch._mount(store, images, new, new.current_instance())
        done += ", mounted"
    return done


def missing_directories(store: Store, images: dict[str, Image],
                        points: dict[str, Stackpoint]) -> list[Problem]:
    problems = []
    owners: list[tuple[str, str]] = [(f"image {i.name!r}", i.layer)
                                     for _, i in sorted(images.items())]
    for name in sorted(points):
        owners += [(f"the instance of {i.image!r} of stackpoint {name!r}", i.layer)
                   for i in points[name].instances]
    for what, layer in owners:
        path = store.layer_path(layer)
        if not os.path.isdir(path):
            problems.append(Problem(
                f"{what}: its layer {path} is missing",
                cannot="its data is gone or on a filesystem that is not mounted; restore it, "
                       "or delete the record with stacko's delete commands"))
        elif not os.path.isdir(store.work_path(layer)):
            problems.append(Problem(f"{what}: its workdir {store.work_path(layer)} is missing",
                                    lambda layer=layer: make_workdir(store, layer)))
    return problems


def make_workdir(store: Store, layer: str) -> str:
    os.makedirs(store.work_dir, mode=0o700, exist_ok=True)
    os.mkdir(store.work_path(layer), 0o700)
    return f"made {store.work_path(layer)}"


def unnamed_layers(store: Store, named: dict[str, str],
                   table: list[mounttable.Mount]) -> list[Problem]:
    problems = []
    used: set[str] = set()
    for m in table:
        used |= mount_layers(store, m)
    for layer in listdir(store.layers_dir):
        if layer in named:
            continue
        path = store.layer_path(layer)
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            problems.append(Problem(f"{path} is not a layer directory",
                                    cannot="stacko never makes one; look at it and remove it"))
            continue
        if layer in used:
            problems.append(Problem(f"layer {path}: no record names it, and it is mounted",
                                    cannot="unmount the stale mount first (see above)"))
            continue
        if is_empty(path):
            problems.append(Problem(
                f"layer {path}: no record names it (empty: left by an interrupted command)",
                lambda layer=layer: remove_layer(store, layer)))
        else:
            problems.append(Problem(
                f"layer {path}: no record names it, and it holds files "
                "(left by an interrupted command)",
                lambda layer=layer: keep_orphan(store, layer)))
    for layer in listdir(store.work_dir):
        if layer in named or os.path.lexists(store.layer_path(layer)):
            continue
        path = store.work_path(layer)
        if layer in used or mounttable.mounts_under(path, table):
            problems.append(Problem(f"workdir {path}: its layer is gone, and it is mounted",
                                    cannot="unmount the stale mount first"))
            continue
        problems.append(Problem(f"workdir {path} has no layer",
                                lambda path=path: remove_path(path)))
    return problems


def remove_layer(store: Store, layer: str) -> str:
    layers.remove_layer(store, layer)
    return f"removed it (and {store.work_path(layer)})"


def remove_path(path: str) -> str:
    if mounttable.mounts_under(path):
        raise StackoError(f"{path} has a mount beneath it")
    remove_tree(path)
    return "removed it"


def keep_orphan(store: Store, layer: str) -> str:
    """Keep the files, out of the way: <root>/orphans/ID."""
    path = store.layer_path(layer)
    if mounttable.mounts_under(path):
        raise StackoError(f"{path} has a mount beneath it")
    orphans = os.path.join(store.root, ORPHANS)
    os.makedirs(orphans, mode=0o700, exist_ok=True)
    target = os.path.join(orphans, layer)
    if os.path.lexists(target):
        raise StackoError(f"{target} exists already")
    try:
        os.rename(path, target)
    except FileNotFoundError:
        # Removed meanwhile: the rm of a killed delete goes on after it.
        remove_path(store.work_path(layer))
        return "it was gone already"
    remove_path(store.work_path(layer))
    return f"kept its files: moved it to {target}; remove that when you no longer need it"


def staging_leftovers(store: Store, table: list[mounttable.Mount]) -> list[Problem]:
    from stacko import staging

    problems = []
    for entry in store.staging_entries():     # only stacko's own names, in a stacko root
        path = os.path.join(store.tmp_dir, entry)
        if staging.in_use(path):
            continue      # an import, pull or export at work right now (they hold no lock)
        if mounttable.mounts_under(path, table):
            problems.append(Problem(f"leftover staging directory {path} has a mount beneath it",
                                    cannot="unmount it first"))
            continue
        problems.append(Problem(f"leftover staging directory {path} (an interrupted "
                                "import-image or export-image)",
                                lambda path=path: remove_path(path)))
    return problems


def stray_manifests(store: Store, images: dict[str, Image]) -> list[Problem]:
    """Content manifests (m/ID.json) of layers that no image has, and temporary
    files of manifests whose writing was interrupted."""
    from stacko import content
    directory = content.manifest_dir(store.root)
    mine = {i.layer for i in images.values()}
    problems = []
    for entry in listdir(directory):
        path = os.path.join(directory, entry)
        if entry.startswith(".") and entry.endswith(".tmp"):
            problems.append(Problem(f"leftover temporary file {path} (an interrupted command)",
                                    lambda path=path: remove_file(path)))
        elif entry.endswith(".json") and entry[:-len(".json")] not in mine:
            problems.append(Problem(f"content manifest {path}: no image has layer "
                                    f"{entry[:-len('.json')]} (left by an interrupted command)",
                                    lambda path=path: remove_file(path)))
    return problems


def metadata_temps(store: Store) -> list[Problem]:
    """Temporary files of images.json and stackpoints.json (state.atomic_write) left
    by a command killed before its rename.  Only a writer, under the exclusive
    lock, ever has one: check holds the lock, so every one found is a leftover."""
    problems = []
    for entry in listdir(store.root):
        base, dot, tail = entry[1:].rpartition(".")
        if entry.startswith(".") and dot and tail == "tmp" and \
                base.rpartition(".")[0] in ("images.json", "stackpoints.json"):
            path = os.path.join(store.root, entry)
            problems.append(Problem(f"leftover temporary file {path} (an interrupted command)",
                                    lambda path=path: remove_file(path)))
    return problems


def remove_file(path: str) -> str:
    try:
        os.unlink(path)
    except FileNotFoundError:      # removed with its layer by a repair above
        return "removed with its layer"
    return "removed it"


def mount_layers(store: Store, m: mounttable.Mount) -> set[str]:
    """The layer ids an overlay mount uses (upper, work and lowers)."""
    return mounttable.layers_of(m, store.layers_dir, store.work_dir)

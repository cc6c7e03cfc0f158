"""Images: immutable layers stacked on a parent.  No argparse here."""
from __future__ import annotations

import os
import time

from stacko import mounttable, overlay, words
from stacko.errors import (AlreadyExists, ImageInUse, ImageNotFound, NeedsRoot, StackTooDeep,
                           StackoError)
from stacko.names import check_name, utc_time
from stacko.records import Image, Stackpoint, record, replace
from stacko.state import Store, locked

EMPTY_LOWER = "../e"     # relative to the layers directory, like every layer


def now() -> str:
    """RFC 3339 in UTC to the second, as every time stacko writes and prints
    (names.utc_time); time, not datetime: cheaper to import."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def get(images: dict[str, Image], name: str) -> Image:
    check_name(name, "image name")
    try:
        return images[name]
    except KeyError:
        from stacko.suggest import did_you_mean
        raise ImageNotFound(f"no image named {name!r}", hint=did_you_mean(
            name, images, "`stacko list-images` shows the images")) from None


def stack_of(images: dict[str, Image], name: str) -> list[Image]:
    """The image and its ancestors, top first."""
    chain = [get(images, name)]
    while chain[-1].parent is not None:
        if len(chain) > overlay.MAX_LAYERS:
            raise StackoError(f"the parents of image {name!r} form a loop or an impossible stack")
        chain.append(get(images, chain[-1].parent))
    return chain


def children_of(images: dict[str, Image], name: str) -> list[str]:
    return sorted(i.name for i in images.values() if i.parent == name)


def instances_of(points: dict[str, Stackpoint], name: str) -> list[str]:
    """The stackpoints that have an instance of image name."""
    return sorted(p.name for p in points.values() if p.instance(name) is not None)


def edit_mount(store: Store, name: str) -> mounttable.Mount | None:
    return mounttable.find_mount(store.edit_path(name))


def refuse_if_editing(store: Store, images: dict[str, Image], name: str, doing: str) -> None:
    """Nothing may stack on an image while its own layer is open for writing."""
    table = mounttable.mounts()     # once, not once per layer of a 500-deep stack
    for image in stack_of(images, name):
        m = mounttable.find_mount(store.edit_path(image.name), table)
        if m is not None and not m.read_only:
            raise ImageInUse(f"cannot {doing}: image {image.name!r} is open for editing",
                             hint=f"run `stacko close-image {image.name}` first")


@locked(exclusive=True)
def new_image(store: Store, name: str, parent: str | None = None,
              configs: tuple[str, ...] | list[str] = (),
              annotations: tuple[str, ...] | list[str] = ()) -> Image:
    check_name(name, "image name")
    images = store.load_images()
    if name in images:
        hint = None
        if parent is not None and parent not in images:
            hint = (f"to stack a new image {parent!r} on {name!r}, the order is NAME PARENT: "
                    f"`stacko new-image {parent} {name}`")
        raise AlreadyExists(f"image {name!r} exists already", hint=hint)
    if parent is not None:
        depth = len(stack_of(images, parent)) + 1
        if depth > overlay.MAX_LAYERS:
            raise StackTooDeep(f"cannot stack {name!r} on {parent!r}: the stack would have "
                               f"{depth} layers, and overlayfs mounts at most {overlay.MAX_LAYERS}")
        refuse_if_editing(store, images, parent, f"stack {name!r} on {parent!r}")
    # A child starts with its parent's run settings (Cmd, Env, …), as a Containerfile
    # FROM does.
    settings = images[parent].settings if parent is not None else None
    if configs or annotations:
        from stacko.formats import runsettings
        settings = runsettings.apply(settings, list(configs), list(annotations))
    image = Image(name=name, layer=store.new_layer(), parent=parent, created=now(),
                  settings=settings)
    try:
        # Sealed from the start: an empty image has a manifest like any other,
        # so verify-image works on every image that is not open for editing.
        image = seal(store, image, whole_filesystem=False)
        store.save_images({**images, name: image})
    except BaseException:
        remove_layer(store, image.layer)
        raise
    return image


def seal(store: Store, image: Image, whole_filesystem: bool = True) -> Image:
    """Record the content manifest of image's layer, durably with the layer's data;
    returns the record to save (with the manifest's digest and the layer's size).

    whole_filesystem=False makes only the manifest durable, for a layer whose
    data the caller knows to be durable already (a fresh, empty one)."""
    from stacko import content, durable
    manifest = content.build(store.layer_path(image.layer))
    content.save(store.root, image.layer, manifest, fsync=not whole_filesystem)
    if whole_filesystem:
        durable.sync_filesystem(store.root)
    return replace(image, manifest=manifest.digest, size=manifest.size)


@overlay.needs_root("edit-image")
@locked(exclusive=True)
def edit_image(store: Store, name: str, read_only: bool = False) -> str:
    images = store.load_images()
    chain = stack_of(images, name)
    target = store.edit_path(name)
    mounted = edit_mount(store, name)
    if mounted is not None:
        if mounted.read_only == read_only:
            return target
        mode = "read-only" if mounted.read_only else "for editing"
        raise ImageInUse(f"image {name!r} is mounted {mode} at {target} already",
                         hint=f"run `stacko close-image {name}` first")
    if not read_only:
        points = store.load_stackpoints()
        kids, users = children_of(images, name), instances_of(points, name)
        if kids or users:
            groups = ([words.named("image", kids)] if kids else []) \
                + ([words.named("stackpoint", users)] if users else [])
            raise ImageInUse(
                f"cannot edit image {name!r}: {words.join(groups)} stack"
                f"{'s' if len(kids) + len(users) == 1 else ''} on it, and overlayfs forbids "
                "changing a lower layer that is in use",
                hint="make a new image on top of it instead, or use --read-only to look inside")
    os.makedirs(target, mode=0o755, exist_ok=True)
    if read_only:
        _mount_edit(store, chain, read_only=True)
    else:
        sealed = chain[0].diff_id is not None or chain[0].manifest is not None \
            or bool(chain[0].digests)
        if sealed:
            # Its layer is about to change: it no longer matches the layer it was
            # imported from, and must not be reused for that layer by a later import
            # or pull (diff_id, digests); nor its manifest: close-image records a new
            # one (unsealed until then); nor the signatures of what was pulled.
            store.save_images({**images, name: replace(chain[0], diff_id=None, manifest=None,
                                                       size=None, digests=(), signed=None,
                                                       blobs=())})
        try:
            if sealed:
                # Unsealed on the disk before the layer can change: else a power cut
                # could leave the old manifest's record on a changed layer.
                store.sync_records(f"not opening image {name!r} for editing",
                                   "nothing was changed")
            _mount_edit(store, chain, read_only=False)
        except BaseException:
            if sealed:
                store.save_images(images)      # nothing changed: still sealed
            raise
    return target


def _mount_edit(store: Store, chain: list[Image], read_only: bool) -> None:
    """Mount chain (top first) at the top image's edit directory."""
    target = store.edit_path(chain[0].name)
    layers = [i.layer for i in chain]
    if read_only:
        lowers = layers if len(layers) > 1 else layers + [EMPTY_LOWER]
        overlay.mount_overlay(target, store.layers_dir, lowers, read_only=True)
    else:
        lowers = layers[1:] or [EMPTY_LOWER]
        overlay.mount_overlay(target, store.layers_dir, lowers, upper=layers[0],
                              work=os.path.relpath(store.work_path(layers[0]), store.layers_dir))


@overlay.needs_root("close-image")
@locked(exclusive=True)
def close_image(store: Store, name: str) -> None:
    """Unmount the edit mount, then seal the image: record its content manifest
    with its data durable.  An image that is not sealed (made before stacko
    recorded manifests, or whose close-image failed after the unmount) is
    sealed by close-image even when it is not mounted."""
    import contextlib
    images = store.load_images()
    image = get(images, name)
    target = store.edit_path(name)
    mounted = edit_mount(store, name)
    with contextlib.ExitStack() as undo:
        if mounted is not None:
            overlay.umount(target)
            # Should sealing fail, the image is open again as it was: nothing changed.
            undo.callback(_mount_edit, store, stack_of(images, name), mounted.read_only)
        if image.manifest is None:
            store.save_images({**images, name: seal(store, image)})
        undo.pop_all()
    if mounted is not None:
        try:
            os.rmdir(target)
        except OSError:
            pass     # something else was mounted or left there: not ours to remove


@locked(exclusive=True)
def delete_image(store: Store, name: str) -> None:
    images = store.load_images()
    image = get(images, name)
    kids, users = children_of(images, name), instances_of(store.load_stackpoints(), name)
    if kids or users:
        groups = [words.named("image", kids)] if kids else []
        if users:
            groups.append(("an instance of " if len(users) == 1 else "instances of ")
                          + words.named("stackpoint", users))
        raise ImageInUse(f"cannot delete image {name!r}: {words.join(groups)} "
                         f"{'uses' if len(kids) + len(users) == 1 else 'use'} it")
    if edit_mount(store, name) is not None:
        raise ImageInUse(f"cannot delete image {name!r}: it is mounted at {store.edit_path(name)}",
                         hint=f"run `stacko close-image {name}` first")
    rest = dict(images)
    del rest[name]
    store.save_images(rest)          # forget first: a crash leaves an unlisted layer, never a
    remove_layer(store, image.layer)  # listed image without its data
    try:
        os.rmdir(store.edit_path(name))
    except OSError:
        pass


@locked(exclusive=False)
def verify_image(store: Store, name: str) -> list[tuple[str, str]]:
    """Recompute the content of image name's layer and compare it with the manifest
    recorded when it was sealed: (kind, path) for each difference, sorted by path,
    kind M (changed), - (missing) or + (extra)."""
    from stacko import content
    if os.geteuid() != 0:
        # trusted.* attributes (opaque directories) are invisible to other users,
        # and layer files may be readable by their owners only.
        raise NeedsRoot("verify-image needs root: it reads every file of the layer",
                        hint="run it as root, e.g. with sudo")
    image = get(store.load_images(), name)
    if image.manifest is None:
        m = edit_mount(store, name)
        if m is not None and not m.read_only:
            raise content.ManifestMissing(
                f"image {name!r} is open for editing: its content is not sealed yet",
                hint=f"`stacko close-image {name}` seals it and records its manifest")
        raise content.ManifestMissing(
            f"image {name!r} has no content manifest (it was made before stacko "
            "recorded them, or its close-image did not finish), so its content "
            "cannot be verified",
            hint=f"`stacko close-image {name}` records one from its present content")
    try:
        recorded = content.load(store.root, image.layer, image.manifest)
    except content.ManifestMissing as e:
        raise content.ManifestMissing(f"image {name!r}: {e.message}") from None
    layer = store.layer_path(image.layer)
    if not os.path.isdir(layer):
        raise StackoError(f"image {name!r}: its layer {layer} is missing",
                          hint="`stacko check` says more")
    actual = content.build(layer, tolerant=True)
    return content.compare(recorded, actual.entries)


@record
class ImageInfo:
    image: Image
    children: tuple[str, ...]
    instances: tuple[str, ...]
    mounted: str | None        # None, "rw" or "ro"

    def to_dict(self, store: Store) -> dict:
        return {"name": self.image.name, "parent": self.image.parent,
                "children": list(self.children), "instances": list(self.instances),
                "mounted": self.mounted is not None, "mode": self.mounted,
                "edit_dir": store.edit_path(self.image.name) if self.mounted else None,
                "layer": store.layer_path(self.image.layer),
                "created": utc_time(self.image.created),
                # the run settings export and push write into the image config
                "config": dict((self.image.settings or {}).get("config") or {}),
                "annotations": dict((self.image.settings or {}).get("annotations") or {}),
                "signatures": signers(self.image),
                "repos": list(self.image.repos)}     # HOST/REPO it was pulled from


def signers(image: Image) -> list:
    """Who signed what pull-image installed (the signatures the trust policy accepted)."""
    kept = (image.signed or {}).get("signatures")
    return [{"type": s.get("type"), "signer": s.get("signer"), "identity": s.get("identity"),
             "digest": s.get("digest")} for s in kept if isinstance(s, dict)] \
        if isinstance(kept, list) else []


@locked(exclusive=False)
def image_names(store: Store) -> list[str]:
    """The names list_images would list, without what it finds out about each.
    Both files are read, as by list_images, so that either being corrupt is
    reported the same way."""
    names = sorted(store.load_images(strict=False))
    store.load_stackpoints(strict=False)
    return names


@locked(exclusive=False)
def list_images(store: Store) -> list[ImageInfo]:
    images = store.load_images(strict=False)      # only shown: a bad record is listed
    points = store.load_stackpoints(strict=False)
    # One pass over each table, not one per image: listings of 1,000 images.
    prefix = store.edit_dir + "/"
    edits = {name: mounttable.find_mount(prefix + name, table)
             for name, table in _edit_mount_tables(prefix).items()}
    kids: dict[str, list[str]] = {}
    for image in images.values():
        if image.parent is not None:
            kids.setdefault(image.parent, []).append(image.name)
    users: dict[str, list[str]] = {}
    for point_name in sorted(points):
        for inst in points[point_name].instances:
            users.setdefault(inst.image, []).append(point_name)
    infos = []
    for name in sorted(images):
        m = edits.get(name)
        infos.append(ImageInfo(images[name], tuple(sorted(kids.get(name, []))),
                               tuple(users.get(name, ())),
                               None if m is None else ("ro" if m.read_only else "rw")))
    return infos


def _edit_mount_tables(prefix: str) -> dict[str, list[mounttable.Mount]]:
    """The mounts at <root>/edit/NAME, by NAME (a list: mounts may be stacked)."""
    found: dict[str, list[mounttable.Mount]] = {}
    for m in mounttable.mounts():
        name = m.mount_point[len(prefix):]
        if m.mount_point.startswith(prefix) and "/" not in name:
            found.setdefault(name, []).append(m)
    return found


def draw_tree(infos: list[ImageInfo]) -> list[str]:
    """Lines of the image forest, parents above their children."""
    by_name = {i.image.name: i for i in infos}
    lines: list[str] = []
    roots = [i.image.name for i in infos if i.image.parent not in by_name]
    # Iterative, so that a 500-deep stack needs no deep recursion.
    todo: list[tuple[str, str, str]] = [(r, "", "") for r in reversed(roots)]
    while todo:
        name, lead, rest = todo.pop()
        lines.append(lead + name)
        kids = list(by_name[name].children)
        for pos, kid in reversed(list(enumerate(kids))):
            last = pos == len(kids) - 1
            todo.append((kid, rest + ("└── " if last else "├── "), rest + ("    " if last else "│   ")))
    return lines


def remove_layer(store: Store, layer: str) -> None:
    """layers.remove_layer, imported when an image is removed: the listings
    do without it (docs/startup.md)."""
    from stacko import layers
    layers.remove_layer(store, layer)

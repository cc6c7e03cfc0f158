"""stacko df: where the disk goes, the way an admin needs to know it.

Sizes are allocated bytes, what the disk gives up (st_blocks × 512, as `du`
counts): every inode of a layer once (a file with three hard links counts
once), directories and symlinks included.  Not the files' lengths: a sparse
file of 200 GiB that holds 20 KiB takes 20 KiB, and deleting it frees that.
A file whose data is shared with another (a reflink clone) counts whole,
although deleting it frees only what it does not share.  Images never change
after they are sealed, so their size is read from images.json, where sealing
records it (content.py); an image recorded before sizes were (size null) is
measured here.  Images sealed by a stacko before sizes were allocated bytes
keep the length of their files as their size until they are sealed again
(edit-image and close-image, or imported again).  Instances change all the time: they are measured at every call, their
workdir with them.

``reclaimable`` is what deleting every non-current instance and then every
image that no current instance needs would free: the images outside the stacks
of the current instances.  That counts an image whose only user is an unused
child, or a non-current instance, although `delete-image` would refuse it
until that user is deleted: deleting in that order frees it, and an admin asking
"what could I get back" means all of it.  ``unused`` on an image is the direct
state (no child image, no instance, not open for editing): what `delete-image`
accepts now.
"""
from __future__ import annotations

import os

from stacko import mounttable
from stacko.records import Image, Stackpoint
from stacko.state import Store, locked
from stacko.words import human


class ImageUsage:
    def __init__(self, name: str, size: int | None, used_by: list[dict[str, str]]) -> None:
        self.name = name
        self.size = size            # None: could not be read (not root)
        self.used_by = used_by      # {"kind": "image"|"stackpoint"|"edit", "name": …}
        self.unused = not used_by

    def to_dict(self) -> dict:
        return {"name": self.name, "size": self.size, "used_by": self.used_by,
                "unused": self.unused}


class InstanceUsage:
    def __init__(self, stackpoint: str, image: str, size: int | None, current: bool) -> None:
        self.stackpoint, self.image, self.size, self.current = stackpoint, image, size, current

    def to_dict(self) -> dict:
        return {"stackpoint": self.stackpoint, "image": self.image, "size": self.size,
                "current": self.current}


class Usage:
    def __init__(self, images: list[ImageUsage], instances: list[InstanceUsage],
                 reclaimable: int, free: int) -> None:
        self.images, self.instances = images, instances
        self.reclaimable, self.free = reclaimable, free

    def to_dict(self) -> dict:
        return {"images": [i.to_dict() for i in self.images],
                "instances": [i.to_dict() for i in self.instances],
                "reclaimable": self.reclaimable, "free": self.free}


def tree_size(path: str) -> int | None:
    """Allocated bytes of path and everything under it, each inode once; None
    when some of it cannot be read.  Iterative: layers may be hundreds of levels
    deep."""
    seen: set[int] = set()
    try:
        total = os.lstat(path).st_blocks * 512
    except FileNotFoundError:
        return 0
    except PermissionError:
        return None
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue          # removed while we looked: it takes no room now
                    if st.st_nlink > 1 and not entry.is_dir(follow_symlinks=False):
                        if st.st_ino in seen:
                            continue
                        seen.add(st.st_ino)
                    total += st.st_blocks * 512
        except FileNotFoundError:
            continue
        except PermissionError:
            return None
    return total


def free_bytes(path: str) -> int:
    """Bytes available to stacko (as root: f_bavail, what `df` shows as Avail)."""
    while True:
        try:
            st = os.statvfs(path)
            return st.f_bavail * st.f_frsize
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                raise
            path = parent       # no state root yet: the filesystem it would be on


def needed_images(images: dict[str, Image], points: dict[str, Stackpoint]) -> set[str]:
    """The images in the stack of some current instance."""
    needed: set[str] = set()
    for point in points.values():
        name: str | None = point.current
        while name is not None and name not in needed and name in images:
            needed.add(name)
            name = images[name].parent
    return needed


@locked(exclusive=False)
def disk_usage(store: Store) -> Usage:
    images = store.load_images()
    points = store.load_stackpoints()
    children: dict[str, list[str]] = {}
    for image in images.values():
        if image.parent is not None:
            children.setdefault(image.parent, []).append(image.name)
    users: dict[str, list[str]] = {}
    for point in points.values():
        for inst in point.instances:
            users.setdefault(inst.image, []).append(point.name)
    editing = {os.path.basename(m.mount_point) for m in mounttable.mounts()
               if os.path.dirname(m.mount_point) == store.edit_dir}

    image_rows = []
    for name in sorted(images):
        image = images[name]
        size = image.size              # recorded when it was sealed (images.seal)
        if size is None:               # not sealed: recorded before sizes were, or open
            size = tree_size(store.layer_path(image.layer))
        used_by = [{"kind": "image", "name": c} for c in sorted(children.get(name, ()))]
        used_by += [{"kind": "stackpoint", "name": p} for p in sorted(users.get(name, ()))]
        if name in editing:
            used_by.append({"kind": "edit", "name": store.edit_path(name)})
        image_rows.append(ImageUsage(name, size, used_by))

    instance_rows = []
    for point_name in sorted(points):
        point = points[point_name]
        for inst in sorted(point.instances, key=lambda i: i.image):
            sizes = [tree_size(store.layer_path(inst.layer)), tree_size(store.work_path(inst.layer))]
            size = None if sizes[0] is None else sizes[0] + (sizes[1] or 0)
            instance_rows.append(InstanceUsage(point_name, inst.image, size,
                                               inst.image == point.current))

    needed = needed_images(images, points)
    reclaimable = sum(i.size or 0 for i in image_rows if i.name not in needed and
                      i.name not in editing)
    reclaimable += sum(i.size or 0 for i in instance_rows if not i.current)
    return Usage(image_rows, instance_rows, reclaimable, free_bytes(store.root))


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def render(usage: Usage) -> list[str]:
    """The plain report: images, instances, then the totals."""
    lines: list[str] = []
    if usage.images:
        rows = [("IMAGE", "SIZE", "UNUSED", "USED BY")]
        for i in usage.images:
            used = ", ".join(u["name"] if u["kind"] == "image" else f"{u['kind']} {u['name']}"
                             for u in i.used_by)
            rows.append((i.name, human(i.size), "yes" if i.unused else "no", used or "-"))
        lines += _table(rows) + [""]
    if usage.instances:
        rows = [("STACKPOINT", "IMAGE", "SIZE", "CURRENT")]
        for n in usage.instances:
            rows.append((n.stackpoint, n.image, human(n.size), "yes" if n.current else "no"))
        lines += _table(rows) + [""]
    lines.append(f"reclaimable  {human(usage.reclaimable)} ({usage.reclaimable} bytes)")
    lines.append(f"free         {human(usage.free)} ({usage.free} bytes)")
    return lines


"""What a record read from the metadata must be before stacko acts on it.

A layer id in a record becomes an ``rm -rf`` and a lowerdir, a stackpoint's
path becomes a mount point: an edited or corrupt file must never make stacko
remove or mount outside its root.  The records' shapes (types, required
fields) are checked by ``from_dict`` in records.py; this module checks their
values and how they fit together, and returns one message per violation, each
naming the file, the record and the field.  To check a new field, add a line
to the function of its record.
"""
from __future__ import annotations

import os

from stacko.names import is_name
from stacko.records import Image, Stackpoint

# Without `re`, which would cost every command's start (see names.is_name).
_LAYER_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def is_layer(text: object) -> bool:
    """Whether text is a layer id as Store.new_layer makes them: [a-z0-9]{5}."""
    return isinstance(text, str) and len(text) == 5 and not text.strip(_LAYER_CHARS)


def is_digest(text: object) -> bool:
    """Whether text is sha256:<64 lowercase hex digits>."""
    return (isinstance(text, str) and len(text) == 71 and text.startswith("sha256:")
            and not text[7:].strip("0123456789abcdef"))


def path_problem(path: str, root: str) -> str:
    """Why path may not be a stackpoint's directory ("" when it may), by the
    rules that need no file system: absolute and normal, not /, neither the
    state root nor inside it, nor above it (a mount there would hide the root)."""
    from stacko.quoting import quote, quoted
    if not os.path.isabs(path) or os.path.normpath(path) != path or path.startswith("//"):
        return f"{quoted(path)} is not an absolute, normalised path"
    if path == "/":
        return "a stackpoint cannot be mounted on /"
    if path == root or path.startswith(root + "/"):
        return f"{quote(path)} is inside the state root {quote(root)}"
    if root.startswith(path + "/"):
        return f"{quote(path)} holds the state root {quote(root)}: a mount there would hide it"
    return ""


def _name(value: str) -> bool:
    return is_name(value)


def image_violations(images: dict[str, Image], source: str) -> list[str]:
    found = []
    owners: dict[str, str] = {}
    for key in sorted(images):
        image = images[key]
        where = f"{source}: image {key!r}"
        if not _name(key):
            found.append(f"{where}: the name is not valid")
        if not is_layer(image.layer):
            found.append(f"{where}: field 'layer' is {image.layer!r}, not a layer id stacko "
                         "makes (5 characters of a-z 0-9)")
        elif image.layer in owners:
            found.append(f"{where}: field 'layer' is {image.layer!r}, the layer of image "
                         f"{owners[image.layer]!r} too")
        else:
            owners[image.layer] = key
        if image.parent is not None and image.parent not in images:
            found.append(f"{where}: field 'parent' names {image.parent!r}, which is no image")
        if image.manifest is not None and not is_digest(image.manifest):
            found.append(f"{where}: field 'manifest' is {image.manifest!r}, not a sha256 digest")
        if image.size is not None and (image.size < 0 or isinstance(image.size, bool)):
            found.append(f"{where}: field 'size' is {image.size!r}, not a number of bytes")
        bad = [d for d in image.digests if not is_digest(d)]
        if bad:     # they decide which layers a pull or import skips
            found.append(f"{where}: field 'digests' holds {bad[0]!r}, not a sha256 digest")
    ends: set[str] = set()          # images whose chain of parents is known to end
    for key in sorted(images):      # parents must end: no loops
        seen: dict[str, None] = {}  # this chain so far, in order
        current: str | None = key
        while current is not None and current in images and current not in ends:
            if current in seen:
                found.append(f"{source}: image {key!r}: field 'parent': its parents form a loop")
                break
            seen[current] = None
            current = images[current].parent
        else:       # every image met on the way ends too: walked once, not once per child
            ends.update(seen)
    return found


def stackpoint_violations(points: dict[str, Stackpoint], source: str, root: str) -> list[str]:
    found = []
    owners: dict[str, str] = {}
    dirs: dict[str, str] = {}
    for key in sorted(points):
        point = points[key]
        where = f"{source}: stackpoint {key!r}"
        if not _name(key):
            found.append(f"{where}: the name is not valid")
        if point.path is not None:
            problem = path_problem(point.path, root)
            if problem:
                found.append(f"{where}: field 'path': {problem}")
                continue
        directory = point.path or os.path.join(root, "stackpoints", key)
        for other, theirs in dirs.items():
            if directory == theirs or directory.startswith(theirs + "/") \
                    or theirs.startswith(directory + "/"):
                found.append(f"{where}: field 'path': {directory} overlaps the directory "
                             f"of stackpoint {other!r} ({theirs})")
        dirs[key] = directory
        images = [i.image for i in point.instances]
        for inst in point.instances:
            if not _name(inst.image):
                found.append(f"{where}: field 'instances': {inst.image!r} is not a valid "
                             "image name")
            if images.count(inst.image) > 1:
                found.append(f"{where}: field 'instances': two instances of {inst.image!r}")
            if not is_layer(inst.layer):
                found.append(f"{where}: field 'instances': the layer of its instance of "
                             f"{inst.image!r} is {inst.layer!r}, not a layer id stacko makes "
                             "(5 characters of a-z 0-9)")
            elif inst.layer in owners:
                found.append(f"{where}: field 'instances': the layer {inst.layer!r} of its "
                             f"instance of {inst.image!r} is {owners[inst.layer]}'s too")
            else:
                owners[inst.layer] = f"stackpoint {key!r}"
        for image in point.history:
            if image not in images:
                found.append(f"{where}: field 'history' names {image!r}, which has no instance")
    return sorted(set(found), key=found.index)


def shared_layers(images: dict[str, Image], points: dict[str, Stackpoint],
                  images_file: str, points_file: str) -> list[str]:
    """A layer that is both an image's and an instance's.  A commit-stackpoint
    stopped between its two metadata writes leaves exactly that (check finishes
    the commit), so loading allows it; removing such a layer is refused
    (layers.remove_layer), and check names every one that a commit did not leave."""
    by_layer = {i.layer: i.name for i in images.values()}
    found = []
    for name in sorted(points):
        point = points[name]
        for inst in point.instances:
            if inst.layer in by_layer and inst.image != images[by_layer[inst.layer]].parent:
                found.append(f"{points_file}: stackpoint {name!r}: field 'instances': the layer "
                             f"{inst.layer!r} of its instance of {inst.image!r} is image "
                             f"{by_layer[inst.layer]!r}'s too (in {images_file})")
    return found

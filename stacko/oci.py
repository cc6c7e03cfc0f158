"""import-image and export-image: one stacko image per OCI layer.

Importing unpacks every new layer into a staging directory under ``<root>/tmp``,
checks every digest, then renames the layers into ``l/`` and only then records
them in images.json, so a failure or a refusal leaves the state as it was.  A
killed import leaves at worst a staging directory (removed by the next
import-image, which holds the exclusive lock) and unrecorded layers that
``stacko check`` reports.

Names: the top image of an import is NAME.  A lower layer reuses an existing
image that holds the same layer (same diff_id) on the same parent; otherwise it
becomes a new image named after the stacko name kept in the layer's
``io.stacko.image.name`` annotation (images exported by stacko), or
``NAME.layer-N`` (N = 1 for the bottom layer) when there is none or it is taken.
"""
from __future__ import annotations

import os
import secrets
import sys
from typing import Dict, List, Optional, Tuple

from stacko import content, durable
from stacko import images as images_mod
from stacko import overlay
from stacko.errors import (AlreadyExists, ImageNotFound, InvalidName, StackoError,
                           StackTooDeep)
from stacko.layertar import BadLayer, HostileArchive, unpack_layer
from stacko.ociexport import write_archive
from stacko.ocisource import (BadArchive, DigestMismatch, HashingReader, LayerSpec, decompressed,
                              open_source)
from stacko.records import NAME_RE, Image, check_name, replace, utc_time
from stacko.state import Store, locked, remove_tree

__all__ = ["import_image", "export_image", "BadArchive", "BadLayer"]


# --- import ----------------------------------------------------------------------
@locked(exclusive=True)
def import_image(store: Store, name: str, path: str, parent: Optional[str] = None,
                 ref: Optional[str] = None) -> Image:
    check_name(name, "image name")
    images = store.load_images()
    if name in images:
        raise AlreadyExists(f"image {name!r} exists already")
    below: List[Image] = []
    if parent is not None:
        below = images_mod.stack_of(images, parent)
        images_mod.refuse_if_editing(store, images, parent, f"import {name!r} onto {parent!r}")
    clean_staging(store)
    staging = os.path.join(store.tmp_dir, f"import-{os.getpid()}-{secrets.token_hex(4)}")
    os.makedirs(staging, mode=0o700)
    try:
        with open_source(path, staging, store.root) as source:
            specs = source.layers(ref)
            if not specs:
                raise BadArchive(f"{path} holds an image without layers")
            depth = len(below) + len(specs)
            if depth > overlay.MAX_LAYERS:
                raise StackTooDeep(f"cannot import {name!r}: its stack would have {depth} "
                                   f"layers, and overlayfs mounts at most {overlay.MAX_LAYERS}")
            planned = plan_images(store, images, name, parent, below, specs)
            new = unpack_all(store, staging, below, specs, planned)
        top = record(store, images, new, planned)[-1]
    finally:
        remove_tree(staging)
    return top


def clean_staging(store: Store) -> None:
    """Remove what a killed import or export left in <root>/tmp (we hold the lock)."""
    if not os.path.isdir(store.tmp_dir):
        os.makedirs(store.tmp_dir, mode=0o700, exist_ok=True)
        return
    if overlay.mounts_under(store.tmp_dir):
        return          # never rmtree beneath a mount; `stacko check` will say so
    for entry in store.staging_entries():     # only stacko's own, never an admin's files
        remove_tree(os.path.join(store.tmp_dir, entry))


def plan_images(store: Store, images: Dict[str, Image], name: str, parent: Optional[str],
                below: List[Image], specs: List[LayerSpec]) -> List[Image]:
    """The image of each layer, bottom first; reused ones are existing records."""
    planned: List[Image] = []
    taken = set(images)
    now = images_mod.now()
    reusing = True
    for n, spec in enumerate(specs, start=1):
        top = n == len(specs)
        if reusing and not top and spec.diff_id:
            found = reusable(store, images, spec.diff_id, parent)
            if found is not None:
                planned.append(found)
                parent = found.name
                continue
        reusing = False
        image_name = name if top else lower_name(name, n, spec, taken)
        taken.add(image_name)
        planned.append(Image(name=image_name, layer="", parent=parent,
                             created=utc_time(spec.created or "") or now,
                             diff_id=spec.diff_id))
        parent = image_name
    return planned


def reusable(store: Store, images: Dict[str, Image], diff_id: str,
             parent: Optional[str]) -> Optional[Image]:
    for image in sorted(images.values(), key=lambda i: i.name):
        if image.diff_id == diff_id and image.parent == parent \
                and images_mod.edit_mount(store, image.name) is None:
            return image
    return None


def lower_name(name: str, n: int, spec: LayerSpec, taken: set) -> str:
    if spec.name and NAME_RE.fullmatch(spec.name) and spec.name not in taken:
        return spec.name
    suffix = f".layer-{n}"
    candidate = name[:128 - len(suffix)] + suffix
    if candidate not in taken:
        return candidate
    short = (spec.diff_id or "")[len("sha256:"):][:8] or secrets.token_hex(4)
    candidate = name[:128 - len(suffix) - 9] + suffix + "-" + short
    if candidate in taken:
        raise AlreadyExists(f"image {candidate!r} exists already",
                            hint=f"import under another name than {name!r}")
    return candidate


def unpack_all(store: Store, staging: str, below: List[Image], specs: List[LayerSpec],
               planned: List[Image]) -> Dict[str, Tuple[str, Optional[str], content.Manifest]]:
    """Unpack the new layers; returns image name -> (staged directory, diff_id, manifest)."""
    lowers = [store.layer_path(i.layer) for i in below]        # top first
    new: Dict[str, Tuple[str, Optional[str], content.Manifest]] = {}
    todo = [(spec, image) for spec, image in zip(specs, planned) if not image.layer]
    done = 0
    for spec, image in zip(specs, planned):
        if image.layer:
            lowers.insert(0, store.layer_path(image.layer))
            continue
        target = os.path.join(staging, f"layer-{len(new)}")
        os.mkdir(target, 0o755)
        done += 1
        progress(f"unpacking layer {done}/{len(todo)} ({image.name})")
        diff_id, hashes = unpack_verified(spec, target, lowers)
        # The manifest in the same pass: the data was hashed as it was written,
        # so this reads only metadata.
        new[image.name] = (target, diff_id, content.build(target, known=hashes))
        lowers.insert(0, target)
    progress("")
    return new


def unpack_verified(spec: LayerSpec, target: str,
                    lowers: List[str]) -> Tuple[Optional[str], Optional[Dict[int, str]]]:
    """Unpack one layer, checking its digests as it streams by; returns its diff_id
    (None for a directory, which is copied: there is no tar to have one) and the
    sha256 of every file written (by inode), for its manifest (None when copied)."""
    if spec.copy_into is not None:
        spec.copy_into(target)
        return None, None
    with spec.open_blob() as blob:
        raw = HashingReader(blob)
        try:
            with decompressed(raw) as plain:  # type: ignore[arg-type]
                diff = HashingReader(plain)
                hashes = unpack_layer(diff, target, lowers)  # type: ignore[arg-type]
                diff.drain()
            raw.drain()
        except (OSError, EOFError) as e:
            raise BadLayer(f"layer {spec.what} is corrupt: {e}") from None
        except (BadLayer, HostileArchive) as e:
            raise type(e)(f"layer {spec.what}: {e.message}", hint=e.hint) from None
    if spec.digest is not None and raw.digest != spec.digest:
        raise DigestMismatch(f"layer {spec.what} does not match its digest: expected "
                             f"{spec.digest}, found {raw.digest}", hint="the archive is corrupt")
    if spec.size is not None and raw.size != spec.size:
        raise DigestMismatch(f"layer {spec.what} has {raw.size} bytes, its descriptor says "
                             f"{spec.size}", hint="the archive is corrupt")
    if spec.diff_id is not None and diff.digest != spec.diff_id:
        raise DigestMismatch(f"layer {spec.what} does not match its diff_id: expected "
                             f"{spec.diff_id}, found {diff.digest}", hint="the archive is corrupt")
    return diff.digest, hashes


def record(store: Store, images: Dict[str, Image], new: Dict[str, tuple],
           planned: List[Image]) -> List[Image]:
    """Rename the staged layers into l/, make them durable, then write images.json;
    undo on failure.

    new maps image name -> (staged directory, diff_id[, manifest]); without a
    manifest one is computed here from the staged files.  A new lower layer
    whose content an existing image on the same parent holds already (same
    manifest digest: an image coming back after an export) reuses that image.
    Every import (and pull) records through here, so the syncfs that makes the
    data durable before images.json names it is never skipped."""
    placed: List[str] = []
    try:
        final: List[Image] = []
        renamed: Dict[str, str] = {}
        reusing = True
        for n, image in enumerate(planned):
            if renamed.get(image.parent or "") is not None:
                image = replace(image, parent=renamed[image.parent or ""])
            if image.name not in new:
                final.append(image)
                continue
            staged, diff_id, *rest = new[image.name]
            manifest = rest[0] if rest else content.build(staged)
            found = None
            if reusing and n < len(planned) - 1:       # the top is NAME: always new
                found = same_content(store, images, manifest.digest, image.parent)
            if found is not None:
                renamed[image.name] = found.name
                final.append(found)
                continue
            reusing = False
            layer = store.new_layer()
            placed.append(layer)
            content.save(store.root, layer, manifest, fsync=False)
            # rename(2) replaces the empty directory new_layer made, atomically.
            os.rename(staged, store.layer_path(layer))
            final.append(replace(image, layer=layer, diff_id=diff_id,
                                 manifest=manifest.digest, size=manifest.size))
        # Durable before recorded: the layers' data, their renames and their
        # manifests reach the disk before images.json names them.
        durable.sync_filesystem(store.root)
        store.save_images({**images, **{i.name: i for i in final}})
        return final
    except BaseException as e:
        for layer in placed:
            store.remove_layer(layer)
        if isinstance(e, OSError):
            raise StackoError(f"cannot move the imported layers into place: {e}") from None
        raise


def same_content(store: Store, images: Dict[str, Image], digest: str,
                 parent: Optional[str]) -> Optional[Image]:
    """An existing, sealed image on parent whose content has this manifest digest."""
    for image in sorted(images.values(), key=lambda i: i.name):
        if image.manifest == digest and image.parent == parent \
                and images_mod.edit_mount(store, image.name) is None:
            return image
    return None


def progress(message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[Kstacko: {message}" if message else "\r\033[K")
        sys.stderr.flush()


# --- export ----------------------------------------------------------------------
@locked(exclusive=False)
def export_image(store: Store, name: str, path: str, compression: str = "gzip") -> None:
    images = store.load_images()
    try:
        chain = images_mod.stack_of(images, name)
    except (ImageNotFound, InvalidName) as e:
        if path in images and name not in images:
            raise type(e)(e.message, hint=f"{path!r} is an image: the order is NAME PATH, "
                                          f"`stacko export-image {path} {name}`") from None
        raise
    images_mod.refuse_if_editing(store, images, name, f"export {name!r}")
    os.makedirs(store.tmp_dir, mode=0o700, exist_ok=True)
    staging = os.path.join(store.tmp_dir, f"export-{os.getpid()}-{secrets.token_hex(4)}")
    os.makedirs(staging, mode=0o700)
    try:
        write_archive(store, list(reversed(chain)), name, path, compression, staging, progress)
    finally:
        remove_tree(staging)

"""import-image and export-image: one stacko image per OCI layer.

Importing unpacks every new layer into a staging directory under ``<root>/tmp``,
checks every digest, then renames the layers into ``l/`` and only then records
them in images.json, so a failure or a refusal leaves the state as it was.  A
killed import leaves at worst a staging directory (removed by the next
import-image or pull-image, see ``stacko.staging``) and unrecorded layers that
``stacko check`` reports.  The lock is held only to check names at the start and
to record at the end (``import_layers``), which pull-image shares.

Names: the top image of an import is NAME.  A lower layer reuses an existing
image that holds the same layer (same diff_id) on the same parent; otherwise it
becomes a new image named after the stacko name kept in the layer's
``io.stacko.image.name`` annotation (images exported by stacko), or
``NAME.layer-N`` (N = 1 for the bottom layer) when there is none or it is taken.
"""
from __future__ import annotations

import contextlib
import errno
import os

from stacko import content, durable, moved
from stacko import images as images_mod
from stacko import overlay
from stacko import staging as staging_mod
from stacko.errors import (AlreadyExists, ImageInUse, ImageNotFound, InvalidName, StackoError,
                           StackTooDeep)
from stacko.formats.tarfields import BadLayer
from stacko.formats.ocisource import BadArchive, LayerSpec
from stacko.imageblobs import check_still, remember
from stacko.layers import remove_layer
from stacko.quoting import quote, quoted
from stacko.names import check_name, is_name, utc_time
from stacko.records import Image, replace
from stacko.state import Store
from stacko.unpacking import unpack_all

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable, Iterator

IMPORT_WORKERS = 4

__all__ = ["import_image", "export_image", "BadArchive", "BadLayer"]


# --- import ----------------------------------------------------------------------
def import_image(store: Store, name: str, path: str, parent: str | None = None,
                 ref: str | None = None) -> Image:
    if is_name(path) and (name == "-" or os.path.lexists(name)) \
            and (not is_name(name) or not os.path.lexists(path)):
        # PATH NAME, the other way round: an invalid name (exit 2), or a name
        # that is a file here while PATH is none.
        hint = (f"{quote(name)} is what to import: the order is NAME PATH, "
                f"`stacko import-image {path} {quote(name)}`")
        if not is_name(name):
            raise InvalidName(f"invalid image name {quoted(name)}", hint=hint)
        raise BadArchive(f"cannot read {quote(path)}: there is no such file or directory",
                         hint=hint)
    @contextlib.contextmanager
    def layers(staging: str) -> Iterator[list[LayerSpec]]:
        from stacko.formats.sourcepath import open_source
        with open_source(path, staging, store.root) as source:
            specs = source.layers(ref)
            if not specs:
                raise BadArchive(f"{quote(path)} holds an image without layers")
            yield specs
    # Up to four layers at once: a layer waits for those beneath only at its end,
    # and a small top layer need not wait for a worker (docs/bench.md).
    return import_layers(store, name, parent, layers, workers=IMPORT_WORKERS)


def import_layers(store: Store, name: str, parent: str | None,
                  layers: Callable[[str], contextlib.AbstractContextManager[list[LayerSpec]]],
                  workers: int = 1, repo: str | None = None,
                  tally: moved.Tally | None = None) -> Image:
    """Import the layers that layers(staging) yields as a chain whose top is NAME.

    The exclusive lock is held only to check the names at the start and to
    record at the end, never while archives are read, blobs downloaded or layers
    unpacked: what was planned is checked again before it is recorded.
    """
    check_name(name, "image name")
    with store.locked(exclusive=True):
        check_target(store, store.load_images(), name, parent)
        staging_mod.clean(store)
    with staging_mod.staging_dir(store.tmp_dir, "import") as staging:
        with layers(staging) as specs:
            with store.locked(exclusive=False):
                images = store.load_images()
                below = check_target(store, images, name, parent)
                depth = len(below) + len(specs)
                if depth > overlay.MAX_LAYERS:
                    raise StackTooDeep(f"cannot import {name!r}: its stack would have {depth} "
                                       f"layers, and overlayfs mounts at most "
                                       f"{overlay.MAX_LAYERS}")
                planned = plan_images(store, images, name, parent, below, specs, repo)
            if tally is not None:
                tally.layers = len(specs)
                for spec, image in zip(specs, planned):
                    if image.layer:
                        tally.note("reused", spec.digest, spec.size,
                                   detail=f": image {quote(image.name)} has it")
            try:
                new = unpack_all(store, staging, below, specs, planned, workers, tally)
            except StackoError as e:
                hint_root(e)
                raise
        with store.locked(exclusive=True):
            current = store.load_images()
            check_target(store, current, name, parent)
            check_unchanged(store, images, current, below, planned)
            top = record(store, current, new, planned)[-1]
    return top


def warm_up() -> None:
    """Load what a pull loads after its trust check, on its way to the layers
    (isal's inflater, the C library's binding for syncfs, the sha256 of the
    image config: ~3 ms), for a caller that would otherwise wait idle:
    pull-image under a trust policy, while gpgv checks the signature.  What
    fails here fails again where it is used, and is reported there."""
    try:
        from isal import isal_zlib  # noqa: F401
        from stacko.lean import libc, sha256
        libc()
        sha256()
    except (ImportError, OSError):
        pass


def hint_root(e: StackoError) -> None:
    """A layer that the kernel refused to unpack for a user other than root."""
    if os.geteuid() != 0 and e.hint is None and os.strerror(errno.EPERM) in e.message:
        e.hint = ("an image keeps its files' owners, devices and setuid bits, which only "
                  "root may set: run the command as root")


def check_target(store: Store, images: dict[str, Image], name: str,
                 parent: str | None) -> list[Image]:
    """NAME must be free and PARENT's stack there and closed; returns that stack."""
    if name in images:
        raise AlreadyExists(f"image {name!r} exists already")
    if parent is None:
        return []
    below = images_mod.stack_of(images, parent)
    images_mod.refuse_if_editing(store, images, parent, f"import {name!r} onto {parent!r}")
    return below


def check_unchanged(store: Store, before: dict[str, Image], now: dict[str, Image],
                    below: list[Image], planned: list[Image]) -> None:
    """What the import stacks on must be as planned, and its new names still free."""
    reused = [i for i in planned if i.layer]
    for image in below + reused:
        if now.get(image.name) != before.get(image.name):
            raise StackoError(f"image {image.name!r} changed while the import ran; "
                              "nothing was imported", hint="run the command again")
    for image in reused:
        if images_mod.edit_mount(store, image.name) is not None:
            raise ImageInUse(f"image {image.name!r} was opened with edit-image while the "
                             "import ran; nothing was imported",
                             hint=f"run `stacko close-image {image.name}` and try again")
    for image in planned:
        if not image.layer and image.name in now:
            raise AlreadyExists(f"image {image.name!r} was made while the import ran; "
                                "nothing was imported", hint="run the command again")


def plan_images(store: Store, images: dict[str, Image], name: str, parent: str | None,
                below: list[Image], specs: list[LayerSpec],
                repo: str | None = None) -> list[Image]:
    """The image of each layer, bottom first; reused ones are existing records."""
    planned: list[Image] = []
    taken = set(images)
    now = images_mod.now()
    reusing = True
    for n, spec in enumerate(specs, start=1):
        top = n == len(specs)
        known = tuple(d for d in (spec.diff_id, spec.digest) if d)
        if reusing and not top and known:
            found = reusable(store, images, known, parent)
            if found is not None:
                planned.append(found)
                parent = found.name
                continue
        reusing = False
        image_name = name if top else lower_name(name, n, spec, taken)
        taken.add(image_name)
        planned.append(Image(name=image_name, layer="", parent=parent,
                             created=utc_time(spec.created or "") or now,
                             diff_id=spec.diff_id, digests=known,
                             settings=spec.settings if top else None,
                             repos=(repo,) if repo else (),
                             signed=spec.signed if top else None,
                             blobs=blob_of(spec)))
        parent = image_name
    return planned


def blob_of(spec: LayerSpec) -> tuple[tuple[str, str, int, str], ...]:
    """The compressed blob a layer came as, for push-image to ask a registry for."""
    if spec.media and spec.digest and spec.size is not None and spec.diff_id:
        return ((spec.media, spec.digest, spec.size, spec.diff_id),)
    return ()


def reusable(store: Store, images: dict[str, Image], digests: tuple[str, ...],
             parent: str | None) -> Image | None:
    """An image on parent that holds the layer with one of these digests."""
    for image in sorted(images.values(), key=lambda i: i.name):
        if image.parent == parent and set(digests) & set(image.known_digests()) \
                and images_mod.edit_mount(store, image.name) is None:
            return image
    return None


def lower_name(name: str, n: int, spec: LayerSpec, taken: set) -> str:
    if spec.name and is_name(spec.name) and spec.name not in taken:
        return spec.name
    suffix = f".layer-{n}"
    candidate = name[:128 - len(suffix)] + suffix
    if candidate not in taken:
        return candidate
    short = (spec.diff_id or "")[len("sha256:"):][:8] or os.urandom(4).hex()
    candidate = name[:128 - len(suffix) - 9] + suffix + "-" + short
    if candidate in taken:
        raise AlreadyExists(f"image {candidate!r} exists already",
                            hint=f"import under another name than {name!r}")
    return candidate


def record(store: Store, images: dict[str, Image], new: dict[str, tuple],
           planned: list[Image]) -> list[Image]:
    """Rename the staged layers into l/, make them durable, then write images.json;
    undo on failure.

    new maps image name -> (staged directory, diff_id[, manifest]); without a
    manifest one is computed here from the staged files.  A new lower layer
    whose content an existing image on the same parent holds already (same
    manifest digest: an image coming back after an export) reuses that image.
    Every import (and pull) records through here, so the syncfs that makes the
    data durable before images.json names it is never skipped."""
    placed: list[str] = []
    try:
        final: list[Image] = []
        renamed: dict[str, str] = {}
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
            digests = image.digests + ((diff_id,) if diff_id and diff_id not in image.digests
                                       else ())
            final.append(replace(image, layer=layer, diff_id=diff_id, digests=digests,
                                 manifest=manifest.digest, size=manifest.size))
        # Durable before recorded: the layers' data, their renames and their
        # manifests reach the disk before images.json names them.
        durable.sync_filesystem(store.root)
        store.save_images({**images, **{i.name: i for i in final}})
        return final
    except BaseException as e:
        for layer in placed:
            remove_layer(store, layer)
        if isinstance(e, OSError):
            raise StackoError(f"cannot move the imported layers into place: {e}") from None
        raise


def same_content(store: Store, images: dict[str, Image], digest: str,
                 parent: str | None) -> Image | None:
    """An existing, sealed image on parent whose content has this manifest digest."""
    for image in sorted(images.values(), key=lambda i: i.name):
        if image.manifest == digest and image.parent == parent \
                and images_mod.edit_mount(store, image.name) is None:
            return image
    return None


def progress(message: str) -> None:
    moved.progress(message)


# --- export ----------------------------------------------------------------------
def export_image(store: Store, name: str, path: str, compression: str = "gzip") -> None:
    """Like pull and import, export holds the lock only to read the stack and,
    at the end, to remember the digests it wrote: never while it packs."""
    with store.locked(exclusive=False):
        images = store.load_images()
        try:
            chain = list(reversed(images_mod.stack_of(images, name)))   # bottom first
        except (ImageNotFound, InvalidName) as e:
            if path in images and name not in images:
                raise type(e)(e.message, hint=f"{quote(path)} is an image: the order is NAME PATH, "
                                              f"`stacko export-image {path} {name}`") from None
            raise
        images_mod.refuse_if_editing(store, images, name, f"export {name!r}")
    with staging_mod.staging_dir(store.tmp_dir, "export") as staging:
        from stacko.formats.ociexport import write_archive
        packed = write_archive(store, chain, name, path, compression, staging, progress)
        try:
            check_still(store, images, chain, f"export {name!r}")
        except StackoError:
            if path != "-":
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
    remember(store, images, chain, packed.layers, packed.diff_ids)

"""What images remember of where their layers went: the compressed blobs each
layer was written as (``Image.blobs``) and the repositories it came from or
went to (``Image.repos``), so that push-image asks a registry for them, or
mounts them, instead of packing the layer again, and import-image and
pull-image reuse the layer.  Export-image and push-image record here."""
from __future__ import annotations

from stacko import images as images_mod
from stacko.errors import StackoError
from stacko.records import Image, replace
from stacko.state import Store


def check_still(store: Store, images: dict[str, Image], chain: list[Image], doing: str) -> None:
    """The stack read at the start is still there, unchanged, and not opened for editing."""
    with store.locked(exclusive=False):
        now = store.load_images()
        for image in chain:
            if now.get(image.name) != images.get(image.name):
                raise StackoError(f"cannot {doing}: image {image.name!r} changed or was "
                                  "deleted meanwhile", hint="run the command again")
        images_mod.refuse_if_editing(store, now, chain[-1].name, doing)


def remember(store: Store, images: dict[str, Image], chain: list[Image], layers: list[dict],
             diff_ids: list[str], repo: str | None = None) -> None:
    """Record on each image of the stack the digests its layer was written under
    (layers: the descriptors written, bottom first), and where it was pushed,
    so that importing or pulling them back reuses it."""
    with store.locked(exclusive=True):
        now = store.load_images()
        changed = {}
        for image, layer, diff_id in zip(chain, layers, diff_ids):
            if now.get(image.name) != images.get(image.name):
                continue           # changed meanwhile: what we wrote may not be its layer
            digests = image.digests + tuple(d for d in (layer["digest"], diff_id)
                                            if d not in image.known_digests())
            repos = image.repos + ((repo,) if repo and repo not in image.repos else ())
            blob = (layer["mediaType"], layer["digest"], layer["size"], diff_id)
            blobs = image.blobs + ((blob,) if all(b[1] != blob[1] for b in image.blobs)
                                   else ())
            if digests != image.digests or repos != image.repos or blobs != image.blobs:
                changed[image.name] = replace(image, digests=digests, repos=repos, blobs=blobs)
        if changed:
            store.save_images({**now, **changed})

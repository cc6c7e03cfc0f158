"""Writing an image stack as an OCI image layout in a tar (an ``oci-archive``).

Deterministic: layer tars are sorted and carry no access times or user names,
gzip headers carry no time or file name, and the layout's own entries have
fixed owners, modes and times, so the same stack always gives the same bytes.
The layers are written to staging files first, because a tar header states
a member's size before its data; then the archive streams out, so memory
does not grow with the image.
"""
from __future__ import annotations

import hashlib
import io
import os
import sys

from stacko.formats.compression import compressor
from stacko.errors import StackoError
from stacko.formats.layerpack import pack_layer
from stacko.formats.ocimanifest import (CONFIG_TYPE, INDEX_TYPES, LAYER_TYPES, MANIFEST_TYPES,
                                        REF_ANNOTATION, config_document, json_bytes,
                                        layer_descriptor, manifest_document)
from stacko.quoting import quote
from stacko.records import Image, record
from stacko.state import Store

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    import tarfile
    from collections.abc import Callable

__all__ = ["CONFIG_TYPE", "LAYER_TYPES", "Blob", "Packed", "assemble", "layer_descriptor",
           "pack_chain", "pack_image_layer", "write_archive", "write_layer"]


class HashingWriter:
    """Writes through, hashing what passes (sha256) and counting it."""

    def __init__(self, inner: io.BufferedIOBase) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.inner.write(data)
        return len(data)

    def flush(self) -> None:
        self.inner.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


@record
class Blob:
    digest: str
    size: int
    path: str          # the staging file that holds it


def write_layer(layer_dir: str, target: str, compression: str) -> tuple[Blob, str]:
    """Pack one layer into target; returns the blob and the layer's diff_id."""
    with open(target, "wb") as f:
        stored = HashingWriter(f)
        with compressor(stored, compression) as packed:  # type: ignore[arg-type]
            # Uncompressed, the blob is the tar: one hash serves as both digests.
            diff = stored if compression == "none" else HashingWriter(packed)  # type: ignore[arg-type]
            pack_layer(layer_dir, diff)  # type: ignore[arg-type]
            packed.finish()
        f.flush()
    return Blob(stored.digest, stored.size, target), diff.digest


def json_blob(data: object, staging: str, blobs: dict[str, Blob]) -> Blob:
    text, digest = json_bytes(data)
    path = os.path.join(staging, digest[len("sha256:"):])
    with open(path, "wb") as f:
        f.write(text)
    blob = Blob(digest, len(text), path)
    blobs.setdefault(digest, blob)
    return blob


@record
class Packed:
    """A stack packed as OCI blobs: what export writes to a tar and push uploads."""
    blobs: dict[str, Blob]               # every blob by digest, the layers' included
    layers: list[dict]                   # layer descriptors, bottom first
    diff_ids: list[str]
    config: Blob
    manifest: Blob
    manifest_type: str


def pack_chain(store: Store, chain: list[Image], compression: str, staging: str,
               progress: Callable[[str], None]) -> Packed:
    """chain: the images of the stack, bottom first."""
    blobs: dict[str, Blob] = {}
    layers, diff_ids = [], []
    try:
        for n, image in enumerate(chain, start=1):
            progress(f"packing layer {n}/{len(chain)} ({image.name})")
            blob, diff_id = pack_image_layer(store, image, n, compression, staging)
            blobs.setdefault(blob.digest, blob)
            layers.append(layer_descriptor(image, LAYER_TYPES[compression], blob.digest,
                                           blob.size))
            diff_ids.append(diff_id)
    finally:
        progress("")           # erased, and never shown after an error message
    return assemble(chain, layers, diff_ids, staging, blobs)


def pack_image_layer(store: Store, image: Image, n: int, compression: str,
                     staging: str) -> tuple[Blob, str]:
    return write_layer(store.layer_path(image.layer), os.path.join(staging, f"layer-{n}"),
                       compression)


def assemble(chain: list[Image], layers: list[dict], diff_ids: list[str], staging: str,
             blobs: dict[str, Blob]) -> Packed:
    """The config and manifest of a stack whose layers are described (bottom
    first).  The top image's run settings go into the config, its annotations
    into the manifest."""
    config_blob = json_blob(config_document(chain, diff_ids), staging, blobs)
    manifest_blob = json_blob(manifest_document(chain, layers, config_blob.digest,
                                                config_blob.size), staging, blobs)
    return Packed(blobs, layers, diff_ids, config_blob, manifest_blob, MANIFEST_TYPES[0])


def write_archive(store: Store, chain: list[Image], name: str, path: str, compression: str,
                  staging: str, progress: Callable[[str], None]) -> Packed:
    """chain: the images of the stack, bottom first."""
    packed = pack_chain(store, chain, compression, staging, progress)
    index = {"schemaVersion": 2, "mediaType": INDEX_TYPES[0],
             "manifests": [{"mediaType": packed.manifest_type, "digest": packed.manifest.digest,
                            "size": packed.manifest.size,
                            "annotations": {REF_ANNOTATION: name}}]}
    import json     # here: a push packs layers with this module, and needs no json
    layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
    index_text = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    if path == "-":
        write_tar(sys.stdout.buffer, layout, index_text, packed.blobs)
        sys.stdout.buffer.flush()
    else:
        write_file(path, lambda f: write_tar(f, layout, index_text, packed.blobs))
    return packed


def write_file(path: str, produce: Callable[[io.BufferedIOBase], None]) -> None:
    """Write path through a temp file beside it: never a half-written archive.

    The directory may be shared (/tmp): the temp file gets a name nobody can
    guess and is created with O_EXCL|O_NOFOLLOW (mkstemp), so that a symlink
    planted there can never make root write through it."""
    import tempfile
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".stacko.tmp",
                                   dir=directory)
    except OSError as e:
        raise StackoError(f"cannot write {quote(path)}: {e.strerror or e}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)      # what open() would have made, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            fd = -1
            produce(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise StackoError(f"cannot write {quote(path)}: {e.strerror or e}") from None
        raise
    try:
        sync_directory(directory)
    except OSError as e:      # the archive is whole and in place: only its name may not last
        print(f"stacko: warning: cannot sync {quote(directory)}: {e.strerror}; {quote(path)} is written "
              "but may not survive a power cut", file=sys.stderr)


def sync_directory(directory: str) -> None:
    """After a rename: make the new name survive a power cut."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _entry(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    import tarfile
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = 0
    info.uname = info.gname = ""
    return info


def write_tar(out: io.BufferedIOBase, layout: bytes, index: bytes, blobs: dict[str, Blob]) -> None:
    import tarfile      # here: a push packs its layers with layerpack's headers alone
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_entry("oci-layout", len(layout)), io.BytesIO(layout))
        tar.addfile(_entry("index.json", len(index)), io.BytesIO(index))
        tar.addfile(_entry("blobs", directory=True))
        tar.addfile(_entry("blobs/sha256", directory=True))
        for digest in sorted(blobs):
            blob = blobs[digest]
            with open(blob.path, "rb") as f:
                tar.addfile(_entry(f"blobs/sha256/{digest[len('sha256:'):]}", blob.size), f)

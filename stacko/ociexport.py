"""Writing an image stack as an OCI image layout in a tar (an ``oci-archive``).

Deterministic: layer tars are sorted and carry no access times or user names,
gzip headers carry no time or file name, and the layout's own entries have
fixed owners, modes and times, so the same stack always gives the same bytes.
The layers are written to staging files first, because a tar header states
a member's size before its data; then the archive streams out, so memory
does not grow with the image.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import shutil
import struct
import sys
import tarfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Callable, Deque, Dict, List, Tuple

from stacko import run
from stacko.errors import StackoError
from stacko.layertar import pack_layer
from stacko.ocisource import INDEX_TYPES, MANIFEST_TYPES, NAME_ANNOTATION, REF_ANNOTATION, \
    host_architecture
from stacko.records import Image, utc_time
from stacko.state import Store

CHUNK = 1 << 20
GZIP_LEVEL = 6            # what Go's compress/gzip and the container tools default to
ZSTD_LEVEL = 3
LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
               "none": "application/vnd.oci.image.layer.v1.tar"}
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


class HashingWriter:
    """Writes through, hashing what passes (sha256) and counting it."""

    def __init__(self, inner: IO[bytes]) -> None:
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


class ParallelGzip:
    """A gzip writer that deflates 1 MiB blocks on all CPUs, as pigz does.

    zlib lets go of the GIL while it compresses, so threads scale.  Each block
    is deflated on its own, primed with the 32 KiB before it and ended with a
    sync flush; the blocks join into one ordinary gzip member.  The output
    depends only on the data, never on timing or the number of threads.
    """

    BLOCK = 1 << 20
    HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"   # no name, no time, OS unknown

    def __init__(self, out: IO[bytes], level: int) -> None:
        self.out, self.level = out, level
        self.workers = max(1, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=self.workers)
        self.pending: Deque[Future] = collections.deque()
        self.buffer = bytearray()
        self.previous = b""
        self.crc = 0
        self.size = 0
        self.out.write(self.HEADER)

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) > self.BLOCK:
            self._submit(bytes(self.buffer[:self.BLOCK]), last=False)
            del self.buffer[:self.BLOCK]
        return len(data)

    def _submit(self, block: bytes, last: bool) -> None:
        self.crc = zlib.crc32(block, self.crc)
        self.size += len(block)
        self.pending.append(self.pool.submit(self._deflate, block, self.previous, last,
                                             self.level))
        self.previous = block[-32768:]
        while len(self.pending) > 2 * self.workers or \
                (self.pending and self.pending[0].done()):
            self.out.write(self.pending.popleft().result())

    @staticmethod
    def _deflate(block: bytes, primer: bytes, last: bool, level: int) -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY,
                             *((primer,) if primer else ()))
        return c.compress(block) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    def finish(self) -> None:
        """Deflate what is left and write the gzip trailer."""
        self._submit(bytes(self.buffer), last=True)
        while self.pending:
            self.out.write(self.pending.popleft().result())
        self.out.write(struct.pack("<II", self.crc & 0xFFFFFFFF, self.size & 0xFFFFFFFF))

    def flush(self) -> None:
        pass

    def __enter__(self) -> "ParallelGzip":
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    path: str          # the staging file that holds it


def write_layer(layer_dir: str, target: str, compression: str) -> Tuple[Blob, str]:
    """Pack one layer into target; returns the blob and the layer's diff_id."""
    with open(target, "wb") as f:
        stored = HashingWriter(f)
        if compression == "zstd":
            holder: List[HashingWriter] = []

            def feed(sink: IO[bytes]) -> None:
                holder.append(HashingWriter(sink))
                pack_layer(layer_dir, holder[0])  # type: ignore[arg-type]
            with run.pipe_through(["zstd", "-q", "-c", f"-{ZSTD_LEVEL}", "--no-progress"],
                                  feed) as out:
                shutil.copyfileobj(out, stored, CHUNK)  # type: ignore[arg-type]
            diff = holder[0]
        elif compression == "gzip":
            with ParallelGzip(stored, GZIP_LEVEL) as packed:  # type: ignore[arg-type]
                diff = HashingWriter(packed)  # type: ignore[arg-type]
                pack_layer(layer_dir, diff)  # type: ignore[arg-type]
                packed.finish()
        else:
            diff = stored
            pack_layer(layer_dir, diff)  # type: ignore[arg-type]
        f.flush()
    return Blob(stored.digest, stored.size, target), diff.digest


def json_blob(data: Any, staging: str, blobs: Dict[str, Blob]) -> Blob:
    text = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
    digest = "sha256:" + hashlib.sha256(text).hexdigest()
    path = os.path.join(staging, digest[len("sha256:"):])
    with open(path, "wb") as f:
        f.write(text)
    blob = Blob(digest, len(text), path)
    blobs.setdefault(digest, blob)
    return blob


def write_archive(store: Store, chain: List[Image], name: str, path: str, compression: str,
                  staging: str, progress: Callable[[str], None]) -> None:
    """chain: the images of the stack, bottom first."""
    blobs: Dict[str, Blob] = {}
    layers, diff_ids, history = [], [], []
    for n, image in enumerate(chain, start=1):
        progress(f"packing layer {n}/{len(chain)} ({image.name})")
        blob, diff_id = write_layer(store.layer_path(image.layer),
                                    os.path.join(staging, f"layer-{n}"), compression)
        blobs.setdefault(blob.digest, blob)
        layers.append({"mediaType": LAYER_TYPES[compression], "digest": blob.digest,
                       "size": blob.size, "annotations": {NAME_ANNOTATION: image.name}})
        diff_ids.append(diff_id)
        entry = {"created_by": f"stacko image {image.name}"}
        if image.created:
            entry["created"] = utc_time(image.created)
        history.append(entry)
    progress("")
    config: Dict[str, Any] = {"architecture": host_architecture(), "os": "linux", "config": {},
                              "rootfs": {"type": "layers", "diff_ids": diff_ids},
                              "history": history}
    if chain[-1].created:
        config["created"] = utc_time(chain[-1].created)
    config_blob = json_blob(config, staging, blobs)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPES[0],
                "config": {"mediaType": CONFIG_TYPE, "digest": config_blob.digest,
                           "size": config_blob.size},
                "layers": layers}
    manifest_blob = json_blob(manifest, staging, blobs)
    index = {"schemaVersion": 2, "mediaType": INDEX_TYPES[0],
             "manifests": [{"mediaType": MANIFEST_TYPES[0], "digest": manifest_blob.digest,
                            "size": manifest_blob.size,
                            "annotations": {REF_ANNOTATION: name}}]}
    layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
    index_text = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
    if path == "-":
        write_tar(sys.stdout.buffer, layout, index_text, blobs)
        sys.stdout.buffer.flush()
        return
    write_file(path, lambda f: write_tar(f, layout, index_text, blobs))


def write_file(path: str, produce: Callable[[IO[bytes]], None]) -> None:
    """Write path through a temp file beside it: never a half-written archive."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.stacko-{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            produce(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise StackoError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def _entry(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = 0
    info.uname = info.gname = ""
    return info


def write_tar(out: IO[bytes], layout: bytes, index: bytes, blobs: Dict[str, Blob]) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_entry("oci-layout", len(layout)), io.BytesIO(layout))
        tar.addfile(_entry("index.json", len(index)), io.BytesIO(index))
        tar.addfile(_entry("blobs", directory=True))
        tar.addfile(_entry("blobs/sha256", directory=True))
        for digest in sorted(blobs):
            blob = blobs[digest]
            with open(blob.path, "rb") as f:
                tar.addfile(_entry(f"blobs/sha256/{digest[len('sha256:'):]}", blob.size), f)

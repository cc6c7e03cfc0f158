"""Reading image archives: an OCI layout (directory or tar), a docker-archive, or a
plain rootfs tarball, recognised from their content and never from the file name.

A source yields the layers of one image, bottom first, each with the digests it
must have; ``oci.py`` unpacks them.  Nothing read from an archive is trusted:
JSON documents are checked against their digest before use, blob paths come
from validated digests, and the digests of layers are checked while unpacking.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re

from stacko import words
from stacko.errors import StackoError
from stacko.formats.layertar import clean_name
# What a document read from outside must be: in ocicheck.py, and named here too.
from stacko.formats.ocicheck import (BadArchive, DigestMismatch, check_digest,
                                     object_field, string_field)
from stacko.formats.ocimanifest import (INDEX_TYPES, MANIFEST_TYPES, NAME_ANNOTATION,
                                        REF_ANNOTATION, host_architecture)
from stacko.quoting import quote
from stacko.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    import tarfile
    from collections.abc import Callable

MAX_JSON = 16 << 20
CHUNK = 1 << 20


class RefNotFound(StackoError):
    """--ref names no image of the archive: the data lacks it (exit 1, not 2)."""


class RefAmbiguous(StackoError):
    """The archive holds several images and no --ref chose one."""


@record
class LayerSpec:
    """One layer to import: how to open its blob, and what it must hash to."""
    open_blob: Callable[[], io.BufferedIOBase]
    what: str                           # for messages: the blob's name in the archive
    digest: str | None = None           # of the blob as stored (compressed)
    size: int | None = None
    diff_id: str | None = None          # of the uncompressed tar
    name: str | None = None             # stacko image name kept in an annotation
    created: str | None = None          # from the config's history
    copy_into: Callable[[str], None] | None = None   # a directory's: copies it, no blob
    settings: dict | None = None        # the image's run settings (top layer only)
    signed: dict | None = None          # pull-image: the signatures accepted (top layer only)
    media: str | None = None            # the blob's media type, from its descriptor


# --- streams -------------------------------------------------------------------
class HashingReader:
    """Reads through, hashing what passes (sha256) and counting it."""

    def __init__(self, inner: io.BufferedIOBase) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


# --- containers: a directory or a tar --------------------------------------------
class Container:
    """Named files of a layout or archive, read-only."""

    what = "the archive"        # for messages: "the OCI layout DIR", "the archive FILE"

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str) -> io.BufferedIOBase:
        raise NotImplementedError

    def read_json(self, name: str, digest: str | None = None) -> object:
        if not self.exists(name):
            raise BadArchive(f"the archive lacks {name}")
        with self.open(name) as f:
            data = f.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise BadArchive(f"{name} is larger than {MAX_JSON >> 20} MiB")
        if digest is not None:
            found = "sha256:" + hashlib.sha256(data).hexdigest()
            if found != digest:
                raise DigestMismatch(f"{name} does not match its digest: expected {digest}, "
                                     f"found {found}", hint="the archive is corrupt")
        try:
            return json.loads(data)
        except ValueError as e:
            raise BadArchive(f"{name} is not valid JSON: {e}") from None
        except RecursionError:
            raise BadArchive(f"{name} is nested too deeply to be an image document") from None


class DirContainer(Container):
    def __init__(self, path: str) -> None:
        self.path = path

    def _full(self, name: str) -> str:
        return os.path.join(self.path, clean_name(name, name))

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._full(name))

    def open(self, name: str) -> io.BufferedIOBase:
        try:
            return open(self._full(name), "rb")
        except OSError as e:
            raise BadArchive(f"cannot read {quote(name)} in {quote(self.path)}: {e.strerror}") from None


class TarContainer(Container):
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members: dict[str, tarfile.TarInfo] = {}
        for member in tar.getmembers():
            try:
                self.members[clean_name(member.name, member.name)] = member
            except StackoError:
                continue      # never looked up: a name that climbs out is no blob of ours

    def exists(self, name: str) -> bool:
        m = self.members.get(clean_name(name, name))
        return m is not None and (m.isreg() or m.issym() or m.islnk())

    def open(self, name: str) -> io.BufferedIOBase:
        member = self.members.get(clean_name(name, name))
        for _ in range(8):      # a blob that is a link to another member: follow a few
            if member is None or not (member.issym() or member.islnk()):
                break
            base = member.name.rpartition("/")[0] if member.issym() else ""
            try:
                target = clean_name(f"{base}/{member.linkname}" if base else member.linkname,
                                    name)
            except StackoError:
                break
            member = self.members.get(target)
        if member is not None and member.isreg() and not member.sparse:
            # Read in place with pread(2): several layers may unpack at once
            # from one archive, which tarfile's shared file position forbids.
            return MemberReader(self.tar.fileobj.fileno(), member.offset_data,  # type: ignore[union-attr,return-value]
                                member.size)
        import tarfile      # loaded already: sourcepath opened the archive with it
        try:
            f = self.tar.extractfile(member) if member is not None else None
        except (KeyError, tarfile.TarError) as e:
            raise BadArchive(f"cannot read {name} in the archive: {e}") from None
        if f is None:
            raise BadArchive(f"the archive lacks {name}")
        return f


class MemberReader:
    """A regular member of a tar file on disk, read with pread(2) (no shared
    file position, so readers in several threads do not disturb each other)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self.fd, self.offset, self.end = fd, offset, offset + size

    def read(self, n: int = -1) -> bytes:
        left = self.end - self.offset
        n = left if n is None or n < 0 else min(n, left)
        data = os.pread(self.fd, n, self.offset) if n > 0 else b""
        if n > 0 and not data:
            raise EOFError("the archive ends inside a member")
        self.offset += len(data)
        return data

    def close(self) -> None:
        pass

    def __enter__(self) -> "MemberReader":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


# --- image formats ---------------------------------------------------------------
def oci_layers(box: Container, ref: str | None) -> list[LayerSpec]:
    index = box.read_json("index.json")
    descriptor = pick_ref(index, ref, "index.json", box.what)
    while descriptor.get("mediaType") in INDEX_TYPES:
        nested = box.read_json(blob_name(descriptor, "index"), descriptor["digest"])
        descriptor = pick_platform(nested)
    manifest_name = blob_name(descriptor, "manifest")
    manifest = box.read_json(manifest_name, descriptor["digest"])
    if not isinstance(manifest, dict):
        raise BadArchive(f"the manifest {manifest_name} is not a JSON object")
    if manifest.get("mediaType", MANIFEST_TYPES[0]) not in MANIFEST_TYPES \
            or not isinstance(manifest.get("layers"), list) \
            or not isinstance(manifest.get("config"), dict):
        raise BadArchive(f"unsupported manifest (media type {manifest.get('mediaType')!r})")
    config = box.read_json(blob_name(manifest["config"], "config"), manifest["config"]["digest"])
    diff_ids = config_diff_ids(config, len(manifest["layers"]))
    specs = []
    for layer, diff_id, created in zip(manifest["layers"], diff_ids,
                                       layer_times(config, len(diff_ids))):
        if not isinstance(layer, dict):
            raise BadArchive("a layer descriptor of the manifest is not an object")
        media = str(layer.get("mediaType", ""))
        if "tar" not in media or media.endswith("+encrypted"):
            raise BadArchive(f"unsupported layer media type {media!r}")
        name = blob_name(layer, "layer")
        where = f"the manifest {manifest_name}: the descriptor of layer {name}"
        stacko_name = string_field(object_field(layer, "annotations", where), NAME_ANNOTATION,
                                   f"{where}: annotations")
        size = layer.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
            raise BadArchive(f"{where}: field 'size' is not a number")
        specs.append(LayerSpec(open_blob=lambda n=name: box.open(n), what=name,
                               digest=layer["digest"], size=size,
                               diff_id=diff_id, name=stacko_name, created=created,
                               media=media))
    return with_settings(specs, run_settings(config, object_field(manifest, "annotations",
                                                                  f"the manifest {manifest_name}")))


def blob_name(descriptor: object, what: str) -> str:
    if not isinstance(descriptor, dict):
        raise BadArchive(f"the {what} descriptor is not an object")
    digest = check_digest(descriptor.get("digest"), f"the {what} descriptor")
    return "blobs/sha256/" + digest[len("sha256:"):]


def pick_ref(index: object, ref: str | None, where: str, what: str) -> dict:
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise BadArchive(f"{where} lists no image")
    refs = [(string_field(object_field(m, "annotations", f"{where}: manifests[{n}]"),
                          REF_ANNOTATION, f"{where}: manifests[{n}]: annotations"), m)
            for n, m in enumerate(manifests) if isinstance(m, dict)]
    if ref is not None:
        for name, m in refs:
            if name == ref:
                return m
        raise RefNotFound(f"{what} has no image {ref!r}; it has {describe_refs(refs)}")
    if len(refs) != 1:
        raise RefAmbiguous(f"{what} holds {len(refs)} images: {describe_refs(refs)}",
                           hint="choose one with --ref")
    return refs[0][1]


def describe_refs(refs: list) -> str:
    names = sorted(str(name) for name, _ in refs if name)
    if not names:
        return "none with a ref name"
    return words.join([repr(n) for n in names]) + ("" if len(names) == len(refs) else
                                f" and {len(refs) - len(names)} without a ref name")


def pick_platform(index: object) -> dict:
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise BadArchive("an image index lists no image")
    if not all(isinstance(m, dict) for m in manifests):
        raise BadArchive("an image index lists an image that is not a JSON object")
    if len(manifests) == 1:
        return manifests[0]
    arch = host_architecture()
    for n, m in enumerate(manifests):
        p = object_field(m, "platform", f"an image index: manifests[{n}]")
        if p.get("os", "linux") == "linux" and p.get("architecture") == arch:
            return m
    raise BadArchive(f"the image index has no image for linux/{arch}")


def config_diff_ids(config: object, count: int) -> list[str]:
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise BadArchive("the image config has no rootfs.diff_ids")
    if len(diff_ids) != count:
        raise BadArchive(f"the image config lists {len(diff_ids)} layers and the manifest {count}")
    return [check_digest(d, "the image config") for d in diff_ids]


RUN_SETTINGS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts",
                "Volumes", "StopSignal")


def run_settings(config: object, annotations: object) -> dict | None:
    """What an image config says about running the image, and the manifest's
    annotations: kept on the top image, written back by export and push."""
    inner = config.get("config") if isinstance(config, dict) else None
    kept = {k: inner[k] for k in RUN_SETTINGS
            if isinstance(inner, dict) and inner.get(k) not in (None, "", [], {})}
    notes = {str(k): str(v) for k, v in annotations.items()} \
        if isinstance(annotations, dict) else {}
    settings = {}
    if kept:
        settings["config"] = kept
    if notes:
        settings["annotations"] = notes
    return settings or None


def with_settings(specs: list[LayerSpec], settings: dict | None) -> list[LayerSpec]:
    if specs and settings:
        specs[-1] = specs[-1]._replace(settings=settings)
    return specs


def layer_times(config: dict, count: int) -> list[str | None]:
    """When each layer was made, from the history entries that made a layer."""
    history = config.get("history")
    if not isinstance(history, list):
        return [None] * count
    times = [h.get("created") if isinstance(h.get("created"), str) else None
             for h in history if isinstance(h, dict) and not h.get("empty_layer")]
    return times if len(times) == count else [None] * count


def docker_layers(box: Container, ref: str | None) -> list[LayerSpec]:
    entries = box.read_json("manifest.json")
    if not isinstance(entries, list) or not entries or \
            not all(isinstance(e, dict) for e in entries):
        raise BadArchive("manifest.json lists no image")
    for e in entries:
        tags = e.get("RepoTags")
        if tags is not None and not (isinstance(tags, list)
                                     and all(isinstance(t, str) for t in tags)):
            raise BadArchive("manifest.json: field 'RepoTags' is not a list of names")
    refs = [(tag, e) for e in entries for tag in (e.get("RepoTags") or [None])]
    if ref is not None or len(entries) > 1:
        entry = pick_ref({"manifests": [{"annotations": {REF_ANNOTATION: t}, "e": e}
                                        for t, e in refs]}, ref, "manifest.json", box.what)["e"]
    else:
        entry = entries[0]
    config_name, layers = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layers, list):
        raise BadArchive("manifest.json has no Config or Layers")
    config = box.read_json(config_name, digest_in_name(config_name))
    diff_ids = config_diff_ids(config, len(layers))
    return with_settings([LayerSpec(open_blob=lambda n=str(n): box.open(n), what=str(n),
                                    digest=digest_in_name(str(n)), diff_id=d, created=c)
                          for n, d, c in zip(layers, diff_ids, layer_times(config, len(diff_ids)))],
                         run_settings(config, None))


def digest_in_name(name: str) -> str | None:
    """docker-archive names blobs after their digest (<hex>.json, blobs/sha256/<hex>)."""
    m = re.fullmatch(r"(?:.*/)?(?:sha256[:/])?([0-9a-f]{64})(?:\.json|\.tar)?", name)
    return "sha256:" + m.group(1) if m else None


# --- opening a PATH ----------------------------------------------------------------



"""pull-image: an image from a registry becomes what import-image makes of it.

The manifest (through an index, for this machine's platform) and the config
are fetched and checked against their digests; then ``oci.import_layers`` plans
the chain exactly as for an archive, so layers already present on the same
parent are reused and never fetched, and the new ones stream from the registry
into the unpacker, several at once, their digests checked on the way.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat

from stacko.log import debug
from stacko.formats.ocisource import (INDEX_TYPES, MANIFEST_TYPES, NAME_ANNOTATION, BadArchive,
                              DigestMismatch, LayerSpec, check_digest, config_diff_ids,
                              layer_times, object_field, run_settings, string_field,
                              with_settings)
from stacko.moved import Tally
from stacko.names import check_name
from stacko.records import Image
from stacko.registry.client import Client, Options, RegistryError, Response
from stacko.registry.transport import (STALL_BYTES, TIMEOUT_VARIABLE, Expired, describe,
                                       transient)
from stacko.registry.ref import Reference, parse
# The look at REF's manifest (update-stackpoint's too) is look.py's; named here as before.
from stacko.registry.look import ACCEPT, document, parse_platform, pick_platform
from stacko.state import Store

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Iterator

WORKERS = 4             # blobs fetched and unpacked at once
RESUMES = 4             # a blob whose connection breaks is resumed (Range) this many times
POLICY = "/etc/containers/policy.json"          # skopeo's defaults: pullsign.py
USER_POLICY = ".config/containers/policy.json"


def pull_image(store: Store, name: str, ref_text: str, platform: str | None = None,
               options: Options = Options(), policy: str | None = None,
               registries_d: str | None = None, tally: Tally | None = None,
               pin: str | None = None, client: Client | None = None) -> Image:
    """tally, when given, counts what was fetched and reused (cli prints it).
    pin: the digest of the manifest to install, found by an earlier look at
    REF (update-stackpoint): a tag that moves meanwhile cannot change what is
    installed under a name made from the digest.  The policy still judges REF."""
    from stacko import oci
    check_name(name, "image name")
    ref = parse(ref_text)
    if pin is not None:
        ref = ref._replace(digest=pin)
    wanted = parse_platform(platform)
    trust = trust_checker(ref_text, policy, registries_d)
    client = client or Client(ref, options)

    @contextlib.contextmanager
    def layers(staging: str) -> Iterator[list[LayerSpec]]:
        yield resolve(client, ref, wanted, trust)
    return oci.import_layers(store, name, None, layers, workers=WORKERS,
                             repo=f"{ref.host}/{ref.repo}", tally=tally)


def trust_checker(ref_text: str, policy: str | None, registries_d: str | None) -> object:
    """The trust policy's check (stacko/signing/pullsign.py), or None without a
    policy, or with one that accepts any image from anywhere."""
    path = policy
    if path is None:
        user = os.path.expanduser("~/" + USER_POLICY)
        path = user if os.path.exists(user) else POLICY if os.path.exists(POLICY) else None
        if path is None:
            return None   # no policy anywhere: accept, as before, importing nothing more
    if accepts_anything(path):
        debug(f"stacko: trust policy {path}: insecureAcceptAnything for every image, "
              "nothing to check")
        return None
    from stacko.signing import pullsign
    return pullsign.checker(ref_text, policy, registries_d)


ACCEPT_ANYTHING = [{"type": "insecureAcceptAnything"}]


def accepts_anything(path: str) -> bool:
    """Whether the policy file at path plainly accepts any image: its default
    and every scope of every transport but docker (Debian's policy.json) are
    insecureAcceptAnything alone.  Then nothing can be refused, and the policy
    machinery (~8 ms of imports and regular expressions) is not loaded.  Any
    other policy, and any file that is not plainly this one (duplicate keys,
    not JSON, not a regular file, large), goes to the full check, which also
    says what is wrong with a bad one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        data = os.read(fd, (64 << 10) + 1)
    except OSError:
        return False
    finally:
        os.close(fd)

    def unique(pairs: list) -> dict:
        if len({key for key, _ in pairs}) != len(pairs):
            raise ValueError("duplicate key")
        return dict(pairs)

    def refuse(name: str) -> object:
        raise ValueError(f"{name} is not JSON")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=unique, parse_constant=refuse)
    except (ValueError, RecursionError):          # UnicodeDecodeError is a ValueError
        return False
    if len(data) > 64 << 10 or not isinstance(doc, dict) \
            or not set(doc) <= {"default", "transports"} or doc.get("default") != ACCEPT_ANYTHING:
        return False
    transports = doc.get("transports", {})
    return isinstance(transports, dict) and "docker" not in transports and all(
        isinstance(scopes, dict) and all(reqs == ACCEPT_ANYTHING for reqs in scopes.values())
        for scopes in transports.values())


def resolve(client: Client, ref: Reference, platform: tuple[str, str, str | None],
            trust: object = None) -> list[LayerSpec]:
    """The layers of the image REF names, bottom first.  The trust policy, when
    there is one, is checked for the manifest to install before anything else
    of the image is fetched."""
    # The check's preparation (its modules) runs while the registry answers.
    prepare = getattr(trust, "prepare", None)
    body, media = client.manifest(ref.reference, ACCEPT, meanwhile=prepare)
    manifest = document(body, f"manifest of {ref}", ref.digest)
    media = manifest.get("mediaType") or media
    digest = ref.digest
    if media in INDEX_TYPES or "manifests" in manifest:
        descriptor = pick_platform(manifest, platform, ref)
        digest = check_digest(descriptor.get("digest"), "the image index")
        body, media = client.manifest(digest, MANIFEST_TYPES)
        manifest = document(body, f"manifest {digest}", digest)
        media = manifest.get("mediaType") or media
    if trust is not None:
        # What the layers will load, loaded while gpgv checks the signature, if it does.
        from stacko import oci
        signed = trust.check(client, ref.repo, body, digest, meanwhile=oci.warm_up)
    else:
        signed = None
    if manifest.get("schemaVersion") != 2 or media not in MANIFEST_TYPES \
            or not isinstance(manifest.get("layers"), list) \
            or not isinstance(manifest.get("config"), dict):
        raise BadArchive(f"{ref}: unsupported manifest (media type {media!r}, schema "
                         f"version {manifest.get('schemaVersion')!r})",
                         hint="stacko reads OCI and Docker schema 2 images")
    config_digest = check_digest(manifest["config"].get("digest"), "the config descriptor")
    config = document(client.blob_bytes(config_digest), f"config of {ref}", config_digest)
    layers = manifest["layers"]
    if not layers:
        raise BadArchive(f"{ref} is an image without layers")
    diff_ids = config_diff_ids(config, len(layers))
    specs = []
    for layer, diff_id, created in zip(layers, diff_ids, layer_times(config, len(diff_ids))):
        if not isinstance(layer, dict):
            raise BadArchive(f"{ref}: a layer descriptor of the manifest is not an object")
        media = str(layer.get("mediaType", ""))
        if "tar" not in media or media.endswith("+encrypted"):
            raise BadArchive(f"{ref}: unsupported layer media type {media!r}")
        digest = check_digest(layer.get("digest"), "a layer descriptor")
        where = f"{ref}: the manifest: the descriptor of layer {digest}"
        size = layer.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            # The download is read to this size and no further (OCI requires it).
            raise BadArchive(f"{where} has no valid size ({size!r})",
                             hint="every OCI descriptor states its blob's size")
        stacko_name = string_field(object_field(layer, "annotations", where), NAME_ANNOTATION,
                                   f"{where}: annotations")
        specs.append(LayerSpec(
            open_blob=lambda d=digest, s=size: BlobReader(client, d, s),
            what=digest, digest=digest, size=size,
            diff_id=diff_id, name=stacko_name, created=created, media=media))
    specs = with_settings(specs, run_settings(config, object_field(manifest, "annotations",
                                                                   f"{ref}: the manifest")))
    if signed is not None:       # the accepted signatures stay with the top image
        specs[-1] = specs[-1]._replace(signed=signed)
    return specs


class BlobReader:
    """A blob's bytes, read straight from the registry, never more than its
    declared size (one byte more is read, to tell a registry that sends more).
    When the connection breaks, the rest is asked for again with a Range
    request, a bounded number of times; whatever arrives is still checked
    against the digest by the caller.  A download that stalls is given up."""

    def __init__(self, client: Client, digest: str, size: int) -> None:
        self.client, self.digest, self.size = client, digest, size
        self.offset = 0
        self.resumes = 0
        self.response: Response | None = client.blob(digest)

    def read(self, n: int = -1) -> bytes:
        left = self.size + 1 - self.offset
        n = left if n is None or n < 0 else min(n, left)
        while True:
            if self.response is None:
                self.response = self.client.request(
                    "GET", f"/v2/{self.client.ref.repo}/blobs/{self.digest}",
                    {"Range": f"bytes={self.offset}-"}, ok=(206,), stream=True)
            try:
                # A connection that ends before the body does raises (http1.CutShort).
                data = self.response.read(n)
            except Expired:
                who = self.response.who
                self.response.close()
                self.response = None
                raise RegistryError(f"the download of {self.digest} from {who} stalled: "
                                    f"less than {STALL_BYTES >> 10} KiB arrived in "
                                    f"{self.client.deadline:g} s",
                                    hint=f"on a slow link, give it longer with "
                                         f"{TIMEOUT_VARIABLE}=SECONDS") from None
            except OSError as e:
                who = self.response.who
                self.response.close()
                self.response = None
                if not transient(e):
                    # Not HTTP (a bad chunk, a field too long): the server's answer
                    # is wrong, and asking again gets the same; only a network's
                    # failure is worth resuming.
                    raise RegistryError(f"{who} sent the blob {self.digest} "
                                        f"in an answer that is not valid HTTP: {describe(e)}",
                                        hint="the registry (or a proxy before it) is broken; "
                                             "retrying will not help") from None
                self.resumes += 1
                if self.resumes > RESUMES:
                    raise RegistryError(f"the download of {self.digest} broke off "
                                        f"{self.resumes} times: {e}") from None
                continue
            self.offset += len(data)
            if self.offset > self.size:
                self.close()
                raise DigestMismatch(f"the registry sends more of {self.digest} than the "
                                     f"{self.size} bytes its descriptor declares; refusing it",
                                     hint="the registry sent corrupt data")
            return data

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None

    def __enter__(self) -> "BlobReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

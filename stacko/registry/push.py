"""push-image: an image's stack to a registry, one layer per image.

The registry is asked first.  Before anything is packed, push-image contacts
it (TLS, credentials: a wrong setting fails at once, whatever the image's size)
with the question for the bottom layer, alone, so that the others reuse its
token; then, for all the other layers at once, it asks about each layer whose
compressed blob stacko remembers (the blob it was pulled as, or what an earlier
export or push packed: ``Image.blobs``).  A layer that came from or went to
another repository of the same registry is mounted from there (one request,
which also answers when the repository has it already); a layer that went to
this repository before is asked for (HEAD) first.  Only the layers left are
packed, exactly as export-image packs them (deterministic, so the same image
always gives the same digests), and each is uploaded while the next one is
packed.  The manifest goes last, so a tag never names an image whose blobs are
not all there.  The digests written are remembered on the images.

A push that packs nothing imports nothing to pack with (tarfile, the
compressors, concurrent.futures) and makes no staging directory: its config
and manifest are built in memory (docs/bench.md).
"""
from __future__ import annotations

import contextlib

from stacko import moved
from stacko.formats.ocimanifest import (LAYER_TYPES, MANIFEST_TYPES, config_document,
                                        json_bytes, layer_descriptor, manifest_document)
from stacko.imageblobs import check_still, remember
from stacko.log import debug
from stacko.moved import Tally, blob_text
from stacko.parallel import Task, map_all
from stacko.records import Image
from stacko.registry.client import Client, Options, RegistryError, Response
from stacko.registry.transport import query
from stacko.registry.ref import Reference, parse
from stacko.state import Store

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable

    from stacko.formats.ociexport import Blob

WORKERS = 4
PACKERS = 2             # layers packed at once (the gzip writer uses every core as well)
# Media types of layer blobs by compression: a Docker gzip layer is the same
# bytes as an OCI one, and goes into the manifest under the OCI type.
COMPRESSIONS = {
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
}
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

Known = tuple  # (media type, digest, size, diff_id): an entry of Image.blobs
Found = tuple  # (Known, "skipped" or "mounted", detail for -v)


def push_image(store: Store, name: str, ref_text: str, compression: str = "gzip",
               options: Options = Options(), sign: dict | None = None,
               tally: Tally | None = None) -> str:
    """Returns the digest of the manifest pushed.  sign: pushsign.Signer's
    options; the signing is made ready (keys found, decrypted) before any
    upload, and done once the manifest is pushed.  tally counts what moved."""
    from stacko import images as images_mod
    ref = parse(ref_text)
    tally = tally if tally is not None else Tally("pushed")
    signer = None
    if sign:
        from stacko.signing import pushsign
        signer = pushsign.Signer(ref_text, **sign)
    with store.locked(exclusive=False):
        images = store.load_images()
        chain = list(reversed(images_mod.stack_of(images, name)))     # bottom first
        images_mod.refuse_if_editing(store, images, name, f"push {name!r}")
    tally.layers = len(chain)
    client = Client(ref, options, push=True)
    here = f"{ref.host}/{ref.repo}"
    sources = mountable(ref, chain)

    def look(n: int) -> Found | None:
        return find_present(client, remembered(chain[n], compression), sources,
                            here in chain[n].repos)
    # The first request settles TLS and the credentials, alone: the others
    # then reuse its token instead of each asking for one.  They are asked
    # while the bottom layer is packed, when the registry lacks it.
    if remembered(chain[0], compression):
        first = look(0)
    else:
        client.has_blob(EMPTY)
        first = None
    rest = Task(map_all, look, range(1, len(chain)), WORKERS)

    def found(n: int) -> Found | None:
        return first if n == 0 else rest.result()[n - 1]  # type: ignore[index]
    layers: list[dict | None] = [None] * len(chain)
    diff_ids: list[str | None] = [None] * len(chain)

    def finish() -> tuple[bytes, str]:
        """The config (sent) and the manifest (returned), once every layer is
        known; the uploads of the last layers may still be going on."""
        config, config_digest = json_bytes(
            config_document(chain, diff_ids))  # type: ignore[arg-type]
        manifest = json_bytes(manifest_document(
            chain, layers, config_digest, len(config)))  # type: ignore[arg-type]
        check_still(store, images, chain, f"push {chain[-1].name!r}")
        send_config(client, config, config_digest, last_source(ref, chain[-1]),
                    here in chain[-1].repos, tally)
        return manifest
    tried = {entry[1] for image in chain for entry in remembered(image, compression)}
    manifest, manifest_digest = send_layers(store, chain, found, layers, diff_ids, compression,
                                            client, sources, tally, tried, finish)
    digest = client.put_manifest(ref.reference, manifest, MANIFEST_TYPES[0]) or manifest_digest
    if signer is not None:
        signer.finish(client, ref.repo, digest)
    remember(store, images, chain, layers, diff_ids, repo=here)  # type: ignore[arg-type]
    return digest


def send_layers(store: Store, chain: list[Image], found: Callable[[int], Found | None],
                layers: list[dict | None], diff_ids: list[str | None], compression: str,
                client: Client, sources: list[str], tally: Tally, tried: set[str],
                finish: Callable[[], tuple[bytes, str]]) -> tuple[bytes, str]:
    """Bottom first: a layer the registry has or mounted (found) is noted; one
    it lacks is packed, and uploaded while the next is packed.  The staging
    directory and the packers only when a layer is packed.  Fills in layers
    and diff_ids; finish() runs while the last uploads go on, and what it
    returns is returned once they are done."""
    import threading
    sent: dict[str, Task] = {}
    packing: dict[int, Task] = {}              # layer -> its packer, until it is sent
    order: list[int] = []                      # the layers packed, bottom first
    logged: list[int] = []                     # those said (-v) packed, in that order
    finished: list[int] = []                   # packers done, in the order they ended
    slots = threading.Semaphore(PACKERS)       # at most PACKERS layers packed at once

    def pack(n: int, work: str) -> object:
        from stacko.formats.ociexport import pack_image_layer
        try:
            return pack_image_layer(store, chain[n], n + 1, compression, work)
        finally:
            finished.append(n)
            slots.release()

    def packed(n: int) -> None:
        """A layer packed: its upload starts at once (unless the same blob
        went already), whether or not the layers beneath it are done."""
        blob, diff_id = packing.pop(n).result()  # type: ignore[misc]
        if blob.digest in sent:          # two layers alike: one upload
            tally.note("skipped", blob.digest, blob.size, detail=": sent already")
        else:
            # At most WORKERS uploads at once: wait for the oldest.
            running = [t for t in sent.values() if not t.done()]
            if len(running) >= WORKERS:
                running[0].result()
            sent[blob.digest] = Task(send_blob, client, blob, sources, tally,
                                     blob.digest in tried)
        layers[n] = layer_descriptor(chain[n], LAYER_TYPES[compression], blob.digest, blob.size)
        diff_ids[n] = diff_id
        # -v says what was packed bottom first, whatever order the packers end in.
        while len(logged) < len(order) and layers[order[len(logged)]] is not None:
            m = order[len(logged)]
            logged.append(m)
            debug(f"stacko: packed {chain[m].name} as "
                  f"{blob_text(layers[m]['digest'], layers[m]['size'])}")  # type: ignore[index]

    def next_slot() -> None:
        """Wait for a free packer; send what the packers finished meanwhile."""
        slots.acquire()
        while finished:
            packed(finished.pop(0))
    with contextlib.ExitStack() as stack:
        work = None
        try:
            for n, image in enumerate(chain):
                hit = found(n)
                if hit is not None:
                    (_media, digest, size, diff_id), how, detail = hit
                    tally.note(how, digest, size, detail=detail)
                    layers[n] = layer_descriptor(image, LAYER_TYPES[compression], digest, size)
                    diff_ids[n] = diff_id
                    continue
                if work is None:
                    from stacko import staging
                    work = stack.enter_context(staging.staging_dir(store.tmp_dir, "export"))
                next_slot()
                moved.progress(f"packing layer {n + 1}/{len(chain)} ({image.name})")
                order.append(n)
                packing[n] = Task(pack, n, work)
            while packing:
                next_slot()
            done = finish()
            if sent:
                moved.progress(f"uploading {len(sent)} layer{'s' if len(sent) != 1 else ''}")
            for task in sent.values():
                task.result()
            return done
        finally:
            for task in list(packing.values()) + list(sent.values()):
                task.wait()                 # nothing reads or writes a file being removed
            moved.progress("")


def mountable(ref: Reference, chain: list[Image]) -> list[str]:
    """Other repositories of the same registry that the stack came from or went to."""
    here = f"{ref.host}/"
    return sorted({r[len(here):] for image in chain for r in image.repos
                   if r.startswith(here) and r != here + ref.repo})


def last_source(ref: Reference, image: Image) -> str | None:
    """The repository of the same registry that image went to (or came from) last."""
    here = f"{ref.host}/"
    for repo in reversed(image.repos):
        if repo.startswith(here) and repo != here + ref.repo:
            return repo[len(here):]
    return None


def remembered(image: Image, compression: str) -> list[Known]:
    """The blobs of image's layer known under this compression."""
    return [b for b in image.blobs if COMPRESSIONS.get(b[0]) == compression]


def find_present(client: Client, known: list[Known], sources: list[str],
                 been_here: bool = False) -> Found | None:
    """The first remembered blob the registry has ("skipped") or could mount
    from one of sources ("mounted"); None: the layer must be packed.

    A layer that went to this repository before is asked for first (HEAD); one
    that did not is mounted first: a mount is one request, and answers 201 as
    well when the repository has the blob already."""
    def heads() -> Found | None:
        for entry in known:
            if client.has_blob(entry[1]):
                return entry, "skipped", ": the registry has it"
        return None

    def mounts() -> Found | None:
        for entry in known:
            for source in sources:
                if mount_blob(client, entry[1], source):
                    return entry, "mounted", f" from {source}"
        return None
    if not known:
        return None
    for ask in ((heads, mounts) if been_here or not sources else (mounts, heads)):
        hit = ask()
        if hit is not None:
            return hit
    return None


def send_blob(client: Client, blob: Blob, sources: list[str], tally: Tally,
              asked: bool = False) -> None:
    """Upload a packed layer, unless the registry has it or can mount it.
    asked: the registry was asked for this digest already (it lacked it)."""
    if not asked:
        if client.has_blob(blob.digest):
            tally.note("skipped", blob.digest, blob.size, detail=": the registry has it")
            return
        for source in sources:
            if mount_blob(client, blob.digest, source):
                tally.note("mounted", blob.digest, blob.size, detail=f" from {source}")
                return
    client.upload_blob(blob.digest, blob.size, lambda: open(blob.path, "rb"))
    tally.note("uploaded", blob.digest, blob.size)


def send_config(client: Client, data: bytes, digest: str, source: str | None,
                been_here: bool, tally: Tally) -> None:
    """The image config, made in memory.  Where the image was pushed before, the
    registry may have it (HEAD); else it is mounted from the repository the
    image went to last, and when that one lacks it, the upload goes into the
    session that the refused mount opened (no request is wasted)."""
    size = len(data)
    if been_here and client.has_blob(digest):
        tally.note("skipped", digest, size, False, detail=": the registry has it")
        return
    location = None
    if source is not None:
        r = post_mount(client, digest, source)
        if r.status == 201:
            tally.note("mounted", digest, size, False, detail=f" from {source}")
            return
        location = r.headers.get("Location") if r.status == 202 else None
    if not location:
        client.upload_blob(digest, size, lambda: data)
    else:
        url = client.absolute(location)
        url += ("&" if "?" in url else "?") + query([("digest", digest)])
        client.request("PUT", url, {"Content-Type": "application/octet-stream",
                                    "Content-Length": str(size)}, body=lambda: data, ok=(201,))
    tally.note("uploaded", digest, size, False)


# Answers to a mount that mean "not mounted, upload it instead": 202 opens an
# upload session; 401 (after the credentials were sent) and 403 say the
# credentials may not read the source repository, which is no reason to fail
# a push that can upload the blob (the upload then says if they may not push).
MOUNT_REFUSED = (401, 403)


def post_mount(client: Client, digest: str, source: str) -> Response:
    """Ask the registry to link a blob it holds in source: 201 when done, 202
    (an upload session opened instead) or MOUNT_REFUSED when not."""
    r = client.request("POST", f"/v2/{client.ref.repo}/blobs/uploads/?"
                       f"{query([('mount', digest), ('from', source)])}",
                       scope=client.scope(source), ok=(201, 202) + MOUNT_REFUSED)
    if r.status in MOUNT_REFUSED:
        debug(f"stacko: {r.who} refused to mount {digest} from {source} "
              f"(HTTP {r.status}): uploading it instead")
    return r


def mount_blob(client: Client, digest: str, source: str) -> bool:
    """Ask the registry to link a blob it holds in source (post_mount): True
    when mounted; a session opened instead is ended."""
    r = post_mount(client, digest, source)
    if r.status == 202:         # not mounted: end the upload session it opened
        location = r.headers.get("Location")
        if location:
            try:
                client.request("DELETE", client.absolute(location), ok=(200, 202, 204, 404))
            except RegistryError:
                pass
    return r.status == 201

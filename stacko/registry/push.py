"""push-image: an image's stack to a registry, one layer per image.

The registry is asked first.  Before anything is packed, push-image contacts
it (TLS, credentials: a wrong setting fails at once, whatever the image's size)
and asks, for each layer whose compressed blob stacko remembers (the blob it
was pulled as, or what an earlier export or push packed: ``Image.blobs``),
whether the registry has it (HEAD) or can mount it from another repository of
the same registry that the image came from or went to.  Only the layers left
are packed, exactly as export-image packs them (deterministic, so the same
image always gives the same digests), and each is uploaded while the next one
is packed, again only when the registry lacks it.  The manifest goes last, so a
tag never names an image whose blobs are not all there.  The digests written
are remembered on the images.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from stacko import run
from stacko.formats.ociexport import (LAYER_TYPES, Blob, Packed, assemble, layer_descriptor,
                                      pack_image_layer)
from stacko.moved import Tally, blob_text
from stacko.records import Image
from stacko.registry.client import Client, Options
from stacko.registry.ref import Reference, parse
from stacko.state import Store

WORKERS = 4
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


def push_image(store: Store, name: str, ref_text: str, compression: str = "gzip",
               options: Options = Options(), sign: dict | None = None,
               tally: Tally | None = None) -> str:
    """Returns the digest of the manifest pushed.  sign: pushsign.Signer's
    options; the signing is made ready (keys found, decrypted) before any
    upload, and done once the manifest is pushed.  tally counts what moved."""
    from stacko import images as images_mod
    from stacko import oci, staging
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
    sources = mountable(ref, chain)
    wanted = [remembered(image, compression) for image in chain]
    # The first request settles TLS and the credentials, alone: the others
    # then reuse its token instead of each asking for one.
    if wanted[0]:
        first = find_present(client, wanted[0], sources)
    else:
        client.has_blob(EMPTY)
        first = None
    with staging.staging_dir(store.tmp_dir, "export") as work, \
            ThreadPoolExecutor(max_workers=WORKERS) as pool:
        found = [first] + list(pool.map(lambda k: find_present(client, k, sources),
                                        wanted[1:]))
        layers: list[dict] = []
        diff_ids: list[str] = []
        blobs: dict[str, Blob] = {}
        sent: dict[str, Future] = {}
        try:
            for n, (image, hit) in enumerate(zip(chain, found), start=1):
                if hit is not None:
                    (_media, digest, size, diff_id), how, detail = hit
                    tally.note(how, digest, size, detail=detail)
                else:
                    oci.progress(f"packing layer {n}/{len(chain)} ({image.name})")
                    blob, diff_id = pack_image_layer(store, image, n, compression, work)
                    digest, size = blob.digest, blob.size
                    run.debug(f"stacko: packed {image.name} as {blob_text(digest, size)}")
                    if digest in sent:          # two layers alike: one upload
                        tally.note("skipped", digest, size, detail=": sent already")
                    else:
                        blobs[digest] = blob
                        sent[digest] = pool.submit(send_blob, client, blob, sources, tally)
                layers.append(layer_descriptor(image, LAYER_TYPES[compression], digest, size))
                diff_ids.append(diff_id)
            oci.progress(f"uploading {len(sent)} layer{'s' if len(sent) != 1 else ''}"
                         if sent else "")
            for future in sent.values():
                future.result()
        finally:
            for future in sent.values():
                future.cancel()
            oci.progress("")
        packed = assemble(chain, layers, diff_ids, work, blobs)
        oci.check_still(store, images, chain, f"push {chain[-1].name!r}")
        send_blob(client, packed.config, sources, tally, layer=False)
        digest = client.put_manifest(ref.reference, manifest_bytes(packed),
                                     packed.manifest_type)
    if signer is not None:
        signer.finish(client, ref.repo, digest or packed.manifest.digest)
    oci.remember(store, images, chain, packed, repo=f"{ref.host}/{ref.repo}")
    return digest or packed.manifest.digest


def manifest_bytes(packed: Packed) -> bytes:
    with open(packed.manifest.path, "rb") as f:
        return f.read()


def mountable(ref: Reference, chain: list[Image]) -> list[str]:
    """Other repositories of the same registry that the stack came from or went to."""
    here = f"{ref.host}/"
    return sorted({r[len(here):] for image in chain for r in image.repos
                   if r.startswith(here) and r != here + ref.repo})


def remembered(image: Image, compression: str) -> list[Known]:
    """The blobs of image's layer known under this compression."""
    return [b for b in image.blobs if COMPRESSIONS.get(b[0]) == compression]


def find_present(client: Client, known: list[Known], sources: list[str]
                 ) -> tuple[Known, str, str] | None:
    """The first remembered blob the registry has ("skipped") or could mount
    from one of sources ("mounted"); None: the layer must be packed."""
    for entry in known:
        if client.has_blob(entry[1]):
            return entry, "skipped", ": the registry has it"
    for entry in known:
        for source in sources:
            if client.mount_blob(entry[1], source):
                return entry, "mounted", f" from {source}"
    return None


def send_blob(client: Client, blob: Blob, sources: list[str], tally: Tally,
              layer: bool = True) -> None:
    if client.has_blob(blob.digest):
        tally.note("skipped", blob.digest, blob.size, layer, detail=": the registry has it")
        return
    for source in sources:
        if client.mount_blob(blob.digest, source):
            tally.note("mounted", blob.digest, blob.size, layer, detail=f" from {source}")
            return
    client.upload_blob(blob.digest, blob.size, lambda: open(blob.path, "rb"))
    tally.note("uploaded", blob.digest, blob.size, layer)

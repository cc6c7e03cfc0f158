"""push-image: an image's stack to a registry, one layer per image.

The stack is packed exactly as export-image packs it (deterministic, so the
same image always gives the same digests).  Each blob is uploaded only when the
registry lacks it: asked first with HEAD, else mounted from another repository
of the same registry that the image came from or went to, else uploaded whole;
several at once, each as soon as it is packed.  The manifest goes last, so a tag never names an image whose
blobs are not all there.  The digests written are remembered on the images.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from stacko.formats.ociexport import Blob, Packed
from stacko.records import Image
from stacko.registry.client import Client, Options
from stacko.registry.ref import Reference, parse
from stacko.state import Store

WORKERS = 4


def push_image(store: Store, name: str, ref_text: str, compression: str = "gzip",
               options: Options = Options(), sign: dict | None = None) -> str:
    """Returns the digest of the manifest pushed.  sign: pushsign.Signer's
    options; the signing is made ready (keys found, decrypted) before any
    upload, and done once the manifest is pushed."""
    from stacko import images as images_mod
    from stacko import oci, staging
    ref = parse(ref_text)
    signer = None
    if sign:
        from stacko.signing import pushsign
        signer = pushsign.Signer(ref_text, **sign)
    with store.locked(exclusive=False):
        images = store.load_images()
        chain = list(reversed(images_mod.stack_of(images, name)))     # bottom first
        images_mod.refuse_if_editing(store, images, name, f"push {name!r}")
    client = Client(ref, options, push=True)
    with staging.staging_dir(store.tmp_dir, "export") as work, \
            ThreadPoolExecutor(max_workers=WORKERS) as pool:
        # Each layer is uploaded while the next one is packed.
        sources = mountable(ref, chain)
        sent: dict[str, Future] = {}

        def on_layer(blob: Blob) -> None:
            if blob.digest not in sent:
                sent[blob.digest] = pool.submit(send_blob, client, blob, sources)
        try:
            packed = oci.pack_checked(store, images, chain, compression, work, on_layer)
            for future in sent.values():
                future.result()
        finally:
            for future in sent.values():
                future.cancel()
        send_blob(client, packed.config, sources)
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


def send_blob(client: Client, blob: Blob, sources: list[str]) -> None:
    if client.has_blob(blob.digest):
        return
    for source in sources:
        if client.mount_blob(blob.digest, source):
            return
    client.upload_blob(blob.digest, blob.size, lambda: open(blob.path, "rb"))

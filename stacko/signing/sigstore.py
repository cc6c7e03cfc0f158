"""Sigstore (cosign) signatures of images, kept in the registry beside the image.

A signature of the manifest ``sha256:<hex>`` lives in the same repository under
the tag ``sha256-<hex>.sig``: an OCI image manifest whose layers are the
signed payloads (media type ``application/vnd.dev.cosign.simplesigning.v1+json``,
the JSON that stacko.signing.payload makes and parses), each with its
signature, standard base64 of the DER ECDSA P-256/SHA-256 signature (RSA
PKCS#1 v1.5 or Ed25519 for such keys), in the annotation
``dev.cosignproject.cosign/signature``.  containers/image
(docker/docker_image_dest.go) and cosign write it so; a second signature
appends a layer, and the config's rootfs.diff_ids lists the layers.

What comes from the registry is hostile: the attachment manifest, its config
and each payload are read bounded (4 MiB, as containers/image's iolimits) and
checked against their digests; layers of other types (attestations) are not
signatures and are skipped.  Whether a signature is good, and for what, is
the policy's to decide (verify here, identity and digest in stacko.signing.policy).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json

from stacko.errors import NotFound, StackoError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from stacko.registry.client import Client

SIGNATURE_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MAX_BODY = 4 << 20          # containers/image's MaxSignatureBodySize and MaxManifestBodySize
MAX_LAYERS = 1000           # signatures of one manifest; far more than any real use


class SignatureError(StackoError):
    """The registry's signatures of a manifest cannot be read or written."""


# --- signing and checking ----------------------------------------------------------
def sign(payload: bytes, key: object) -> str:
    """The base64 signature of payload with key (from cosignkey.load_private),
    as sigstore's SignerVerifier makes it for that key's kind."""
    from stacko.signing.cosignkey import require
    require(nacl=False)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))        # DER, as Go's SignASN1
    elif isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(payload)
    else:
        raise SignatureError(f"cannot sign with a {type(key).__name__}")
    return base64.b64encode(signature).decode("ascii")


def verify(payload: bytes, signature_b64: str, public_key_pems: list) -> bool:
    """Whether signature_b64 is a valid signature of payload by one of the keys
    (PEM bytes or str, or keys cosignkey.load_public made).  Every key is
    loaded first and a key that cannot be read raises KeyUnreadable, even when
    another would match, as containers/image does: a broken fallback key is
    found before it is needed.  Only the signature is checked here, not what
    the payload says."""
    from stacko.signing import cosignkey
    keys = [k if not isinstance(k, (bytes, str)) else
            cosignkey.load_public(k, f"public key {i + 1}")
            for i, k in enumerate(public_key_pems)]
    if not keys:
        raise SignatureError("no public key to check a sigstore signature with")
    signature = decode_signature(signature_b64)
    if signature is None:
        return False
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    for key in keys:
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
                return True
            # Rarer kinds: their modules only when such a key is there.
            from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
                return True
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, payload)
                return True
        except (InvalidSignature, ValueError):
            continue
    return False


def decode_signature(text: object) -> bytes | None:
    """Go's base64.StdEncoding.DecodeString: padded standard base64; it skips
    only CR and LF.  None when text is not that."""
    if not isinstance(text, str):
        return None
    try:
        return base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        return None


# --- the attachment in the registry -------------------------------------------------
def attachment_tag(manifest_digest: str) -> str:
    """sha256:<hex> -> sha256-<hex>.sig (containers/image's sigstoreAttachmentTag)."""
    algorithm, colon, hexpart = manifest_digest.partition(":")
    if (algorithm != "sha256" or not colon or len(hexpart) != 64
            or any(c not in "0123456789abcdef" for c in hexpart)):
        raise SignatureError(f"not a sha256 manifest digest: {manifest_digest!r}")
    return f"{algorithm}-{hexpart}.sig"


def client_for(client: Client, repository: str) -> Client:
    """client itself, or one like it (same registry, options and rights) for
    another repository of the same registry."""
    if repository == client.ref.repo:
        return client
    from stacko.registry.client import Client
    from stacko.registry.ref import Reference
    return Client(Reference(host=client.ref.host, repo=repository, tag="latest", digest=None),
                  client.options, push=client.push)


def read_bounded(client: Client, path: str, headers: dict[str, str], what: str,
                 limit: int = MAX_BODY) -> tuple[bytes, str]:
    """The body (at most limit + 1 bytes: more is the caller's to refuse) and
    media type of GET path."""
    with client.request("GET", path, headers, stream=True) as r:
        media = (r.headers.get("Content-Type") or "").split(";")[0].strip()
        return r.read(limit + 1), media


def too_large(what: str) -> SignatureError:
    return SignatureError(f"{what} is larger than {MAX_BODY >> 20} MiB")


def get_attachment(client: Client, manifest_digest: str) -> dict | None:
    """The parsed attachment manifest of manifest_digest, None when the tag is absent."""
    tag = attachment_tag(manifest_digest)
    what = f"the signature manifest {client.ref.host}/{client.ref.repo}:{tag}"
    try:
        body, media = read_bounded(client, f"/v2/{client.ref.repo}/manifests/{tag}",
                                   {"Accept": OCI_MANIFEST}, what)
    except NotFound:
        return None
    if len(body) > MAX_BODY:
        raise too_large(what)
    if media and media != OCI_MANIFEST:
        raise SignatureError(f"{what} is a {media!r}, not an OCI image manifest")
    data = parse_json(body, what)
    layers = data.get("layers", [])
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise SignatureError(f"{what} has no valid list of layers")
    for layer in layers:
        check_descriptor(layer, what)
    if "config" in data:
        check_descriptor(data["config"], what)
    return data


def parse_json(body: bytes, what: str) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise SignatureError(f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise SignatureError(f"{what} is not a JSON object")
    return data


def check_descriptor(descriptor: object, what: str) -> None:
    ok = (isinstance(descriptor, dict)
          and isinstance(descriptor.get("mediaType"), str)
          and isinstance(descriptor.get("digest"), str)
          and isinstance(descriptor.get("size"), int) and not isinstance(descriptor["size"], bool)
          and descriptor["size"] >= 0
          and isinstance(descriptor.get("annotations", {}), dict))
    if ok:
        try:
            attachment_tag(descriptor["digest"])          # type: ignore[index]
        except SignatureError:
            ok = False
    if not ok:
        raise SignatureError(f"{what} has a malformed descriptor")


def get_blob(client: Client, descriptor: dict, what: str) -> bytes:
    """A blob the descriptor names, its size and digest checked."""
    size, digest = descriptor["size"], descriptor["digest"]
    if size > MAX_BODY:
        raise too_large(what)
    body, _ = read_bounded(client, f"/v2/{client.ref.repo}/blobs/{digest}", {}, what, size)
    found = "sha256:" + hashlib.sha256(body).hexdigest()
    if len(body) != size or found != digest:
        raise SignatureError(f"{what} does not match its digest {digest}",
                             hint="the registry sent corrupt data")
    return body


def fetch_signatures(client: Client, repository: str,
                     manifest_digest: str) -> list[tuple[bytes, str]]:
    """The (payload, base64 signature) pairs attached to manifest_digest in
    repository (of client's registry), in the order of the layers; [] when there
    is no attachment.  A signature layer without the annotation gives "" (no
    signature verifies then).  Nothing here is trusted yet."""
    client = client_for(client, repository)
    attachment = get_attachment(client, manifest_digest)
    if attachment is None:
        return []
    found = []
    for index, layer in enumerate(attachment.get("layers", [])):
        if layer["mediaType"] != SIGNATURE_TYPE:
            continue                           # an attestation or another attachment
        what = f"signature {index + 1} of {manifest_digest} in {client.ref.host}/{repository}"
        payload = get_blob(client, layer, what)
        signature = layer.get("annotations", {}).get(SIGNATURE_ANNOTATION, "")
        found.append((payload, signature if isinstance(signature, str) else ""))
    return found


def attach(client: Client, repository: str, manifest_digest: str, payload: bytes,
           signature_b64: str) -> None:
    """Add the signature to manifest_digest's attachment in repository (client
    must push): the payload as a new layer unless the very same one (type,
    digest, size and annotations) is there already, the config's diff_ids and
    the manifest updated, the tag written; then the tag is read again, and a
    signature not found there (another writer raced us) is an error."""
    client = client_for(client, repository)
    if not client.push:
        raise SignatureError("internal: attach needs a client that may push")
    attachment = get_attachment(client, manifest_digest)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    layer = {"mediaType": SIGNATURE_TYPE, "digest": digest, "size": len(payload),
             "annotations": {SIGNATURE_ANNOTATION: signature_b64}}
    if attachment is None:
        manifest: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": None,
                          "layers": []}
        # What containers/image writes: an empty image config whose rootfs lists the layers.
        config: dict = {"architecture": "", "os": "", "config": {},
                        "rootfs": {"type": "layers", "diff_ids": []}}
    else:
        manifest = attachment
        if "config" not in manifest:
            raise SignatureError(f"the signature manifest of {manifest_digest} has no config")
        config = parse_json(get_blob(client, manifest["config"], "its config"),
                            f"the config of the signature manifest of {manifest_digest}")
    layers = manifest.setdefault("layers", [])
    if not any(existing == layer for existing in layers):
        send(client, payload, digest)
        layers.append(layer)
        rootfs = config.get("rootfs")
        if not isinstance(rootfs, dict):
            rootfs = config["rootfs"] = {"type": "layers"}
        if not isinstance(rootfs.get("diff_ids"), list):
            rootfs["diff_ids"] = []
        rootfs["diff_ids"].append(digest)
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        send(client, config_bytes, config_digest)
        manifest["config"] = {"mediaType": OCI_CONFIG, "digest": config_digest,
                              "size": len(config_bytes)}
        body = json.dumps(manifest, separators=(",", ":")).encode()
        client.put_manifest(attachment_tag(manifest_digest), body, OCI_MANIFEST)
    if (payload, signature_b64) not in fetch_signatures(client, repository, manifest_digest):
        raise SignatureError(
            f"the signature of {manifest_digest} is not in {client.ref.host}/{repository}:"
            f"{attachment_tag(manifest_digest)} after it was written",
            hint="another signer may have written the tag at the same time; sign again")


def send(client: Client, data: bytes, digest: str) -> None:
    if not client.has_blob(digest):
        client.upload_blob(digest, len(data), lambda: data)

"""What a registry says REF names: its manifest, through an index for this
machine's platform, as pull-image reads it; and the digest of the manifest
pull-image would install, which is all update-stackpoint needs to tell that
nothing is new.  Apart from pull.py, so that such a look imports neither
tarfile (the unpacker's) nor hashlib (OpenSSL's libcrypto): docs/startup.md."""
from __future__ import annotations

from stacko.errors import StackoError, UsageError
from stacko.formats.ocicheck import BadArchive, DigestMismatch, check_digest, object_field
from stacko.formats.ocimanifest import INDEX_TYPES, MANIFEST_TYPES, host_architecture
from stacko.lean import parse_json, sha256

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from stacko.registry.client import Client
    from stacko.registry.ref import Reference

ACCEPT = INDEX_TYPES + MANIFEST_TYPES


def parse_platform(text: str | None) -> tuple[str, str, str | None]:
    if text is None:
        return "linux", host_architecture(), None
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"malformed --platform {text!r}", hint="write OS/ARCH[/VARIANT], "
                                                                "e.g. linux/arm64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def document(body: bytes, what: str, digest: str | None) -> dict:
    if digest is not None:
        found = "sha256:" + sha256(body).hexdigest()  # type: ignore[attr-defined]
        if found != digest:
            raise DigestMismatch(f"the {what} does not match its digest: expected {digest}, "
                                 f"found {found}", hint="the registry sent corrupt data")
    try:
        # JSON travels as UTF-8 (RFC 8259); json.loads would guess UTF-16 or -32
        # from NULs and complain in those terms instead.
        data = parse_json(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadArchive(f"the {what} is not JSON: byte {e.start} is not UTF-8 text") from None
    except ValueError as e:
        raise BadArchive(f"the {what} is not valid JSON: {e}") from None
    except RecursionError:
        raise BadArchive(f"the {what} is nested too deeply to be an image document") from None
    if not isinstance(data, dict):
        raise BadArchive(f"the {what} is not a JSON object")
    return data


def describe_platform(p: object) -> str:
    if not isinstance(p, dict):
        return "?"
    return "/".join(str(x) for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


def pick_platform(index: dict, platform: tuple[str, str, str | None],
                  ref: Reference) -> dict:
    manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    os_name, arch, variant = platform
    for n, m in enumerate(manifests):
        p = object_field(m, "platform", f"{ref}: the image index: manifests[{n}]")
        if p.get("os") == os_name and p.get("architecture") == arch \
                and (variant is None or p.get("variant") == variant):
            return m
    have = ", ".join(sorted({describe_platform(m.get("platform")) for m in manifests
                             if describe_platform(m.get("platform")) != "unknown/unknown"}))
    wanted = "/".join(x for x in platform if x)
    raise StackoError(f"{ref} has no image for {wanted}; it has: {have or 'none'}",
                      hint="choose one with --platform OS/ARCH")


def manifest_digest(client: Client, ref: Reference, platform: tuple[str, str, str | None]
                    ) -> str:
    """The digest of the manifest pull-image would install for REF: one GET
    (of the index, whose entry for the platform names it; or of the manifest)."""
    body, media = client.manifest(ref.reference, ACCEPT)
    doc = document(body, f"manifest of {ref}", ref.digest)
    if (doc.get("mediaType") or media) in INDEX_TYPES or "manifests" in doc:
        return check_digest(pick_platform(doc, platform, ref).get("digest"),
                            "the image index")
    return ref.digest or "sha256:" + sha256(body).hexdigest()  # type: ignore[attr-defined]

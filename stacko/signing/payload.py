"""The signed payload: what a signature says it is about.

Both signature formats sign the same JSON (containers-signature(5)): a
``critical`` object with exactly ``type``, ``image.docker-manifest-digest`` and
``identity.docker-reference``, and an ``optional`` object (creator, timestamp).
Parsed as strictly as containers/image parses it (signature/simple.go,
signature/internal/sigstore_payload.go): every object has exactly its keys, no
key twice, nothing after the object; only cosign's format allows ``optional``
to be null.
"""
from __future__ import annotations

import json
import time

from stacko import __version__
from stacko.errors import StackoError
from stacko.records import record

GPG = "atomic container signature"
SIGSTORE = "cosign container image signature"
TYPES = (GPG, SIGSTORE)
DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}


class InvalidPayload(StackoError):
    """The signed data is not a valid signature payload (a bad signature)."""


@record
class Payload:
    reference: str           # identity.docker-reference, as signed
    digest: str              # image.docker-manifest-digest
    creator: str | None = None
    timestamp: int | None = None


def make(docker_reference: str, manifest_digest: str, sig_type: str) -> bytes:
    """The payload to sign, as containers/image writes it (keys sorted, compact)."""
    if sig_type not in TYPES:
        raise ValueError(f"unknown signature type {sig_type!r}")
    if not docker_reference or not manifest_digest:
        raise ValueError("a payload needs a reference and a digest")
    check_digest(manifest_digest)
    creator = ("atomic " if sig_type == GPG else "containers/image ") + f"stacko {__version__}"
    data = {"critical": {"identity": {"docker-reference": docker_reference},
                         "image": {"docker-manifest-digest": manifest_digest},
                         "type": sig_type},
            "optional": {"creator": creator, "timestamp": int(time.time())}}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def check_digest(text: object) -> str:
    """A digest as go-digest's Parse accepts it for the algorithms it knows."""
    if not isinstance(text, str):
        raise InvalidPayload("the signed manifest digest is not a string")
    algorithm, colon, hex_part = text.partition(":")
    if not colon or DIGEST_HEX.get(algorithm) != len(hex_part) \
            or hex_part.strip("0123456789abcdef"):
        raise InvalidPayload(f"invalid docker-manifest-digest value {text[:100]!r}")
    return text


def _pairs(pairs: list) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidPayload(f"duplicate key {key!r} in the signed payload")
        seen[key] = value
    return seen


def _constant(name: str) -> object:
    raise InvalidPayload(f"{name} is not JSON")


def _exact(value: object, keys: tuple, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidPayload(f"{where} of the signed payload is not a JSON object")
    for key in value:
        if key not in keys:
            raise InvalidPayload(f"unknown key {key!r} in {where} of the signed payload")
    for key in keys:
        if key not in value:
            raise InvalidPayload(f"key {key!r} missing in {where} of the signed payload")
    return value


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidPayload(f"{what} in the signed payload is not a string")
    return value


def parse(data: bytes, sig_type: str) -> Payload:
    """The payload in data, which must be of sig_type; InvalidPayload if not."""
    if sig_type not in TYPES:
        raise ValueError(f"unknown signature type {sig_type!r}")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_pairs,
                         parse_constant=_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, InvalidPayload):
            raise
        raise InvalidPayload(f"the signed payload is not valid JSON: {e}") from None
    top = _exact(doc, ("critical", "optional"), "the top level")
    optional = top["optional"]
    creator = timestamp = None
    if optional is not None or sig_type == GPG:
        if not isinstance(optional, dict):
            raise InvalidPayload("'optional' of the signed payload is not a JSON object")
        if "creator" in optional:
            creator = _string(optional["creator"], "optional.creator")
        if "timestamp" in optional:
            stamp = optional["timestamp"]
            if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) \
                    or stamp != int(stamp):
                raise InvalidPayload("field optional.timestamp is not an integer")
            timestamp = int(stamp)
    critical = _exact(top["critical"], ("type", "image", "identity"), "'critical'")
    kind = _string(critical["type"], "critical.type")
    if kind != sig_type:
        raise InvalidPayload(f"unrecognized signature type {kind[:100]!r}")
    image = _exact(critical["image"], ("docker-manifest-digest",), "critical.image")
    digest = check_digest(image["docker-manifest-digest"])
    identity = _exact(critical["identity"], ("docker-reference",), "critical.identity")
    reference = _string(identity["docker-reference"], "identity.docker-reference")
    return Payload(reference, digest, creator, timestamp)

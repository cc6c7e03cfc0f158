"""Checks of the OCI and Docker documents stacko reads from outside (an
archive, a registry): digests and field types, and the errors for what fails
them.  Apart from ocisource.py (the archive readers, with tarfile), so that
update-stackpoint's look at a registry's manifest imports neither tarfile nor
re (docs/startup.md)."""
from __future__ import annotations

from stacko.errors import StackoError
from stacko.validate import is_digest


class BadArchive(StackoError):
    """The archive is not what it claims, or is corrupt."""


class DigestMismatch(BadArchive):
    pass


def check_digest(digest: object, what: str) -> str:
    if not is_digest(digest):
        raise BadArchive(f"{what}: unsupported or malformed digest {digest!r}",
                         hint="stacko reads sha256 digests")
    return digest  # type: ignore[return-value]


def object_field(data: dict, key: str, where: str) -> dict:
    """data[key], which must be a JSON object ({} when it is absent): hostile
    documents put lists and numbers where objects go."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadArchive(f"{where}: field {key!r} is not an object")
    return value


def string_field(data: dict, key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise BadArchive(f"{where}: field {key!r} is not a string")
    return value

"""signedIdentity: which references a signature may name for an image
(containers-policy.json(5); containers/image signature/policy_reference_match.go).

``intended`` is the reference the image was asked for (pull-image's REF),
``signed`` what the signature names.  Anything that does not parse never matches.
"""
from __future__ import annotations

import re

from stacko.records import record
from stacko.signing.dockerref import (DOMAIN, NAME, BadReference, Named,
                                      parse_named, parse_normalized)

MATCH_EXACT = "matchExact"
MATCH_REPO_DIGEST_OR_EXACT = "matchRepoDigestOrExact"
MATCH_REPOSITORY = "matchRepository"
EXACT_REFERENCE = "exactReference"
EXACT_REPOSITORY = "exactRepository"
REMAP_IDENTITY = "remapIdentity"
FIELDS = {MATCH_EXACT: (), MATCH_REPO_DIGEST_OR_EXACT: (), MATCH_REPOSITORY: (),
          EXACT_REFERENCE: ("dockerReference",), EXACT_REPOSITORY: ("dockerRepository",),
          REMAP_IDENTITY: ("prefix", "signedPrefix")}
_DOMAIN_PREFIX = rf"{DOMAIN}/"       # patterns: compiled when first used (dockerref)


@record
class IdentityMatch:
    type: str
    value: str = ""          # dockerReference or dockerRepository
    prefix: str = ""
    signed_prefix: str = ""

    def describe(self) -> str:
        extra = self.value or (f"{self.prefix} -> {self.signed_prefix}" if self.prefix else "")
        return self.type + (f" {extra}" if extra else "")


DEFAULT = IdentityMatch(MATCH_REPO_DIGEST_OR_EXACT)


def check_prefix(text: str) -> bool:
    """validateIdentityRemappingPrefix: a host, or host/namespace…"""
    return bool(re.fullmatch(DOMAIN, text, re.ASCII)
                or (re.fullmatch(NAME, text, re.ASCII)
                    and re.match(_DOMAIN_PREFIX, text, re.ASCII)))


def make(kind: str, fields: dict) -> IdentityMatch:
    """An IdentityMatch from a policy's already type-checked fields; ValueError
    saying why when a value is invalid."""
    if kind == EXACT_REFERENCE:
        ref = _parse(fields["dockerReference"], "dockerReference")
        if ref.name_only:
            raise ValueError(f"dockerReference {fields['dockerReference']!r} contains "
                             "neither a tag nor a digest")
        return IdentityMatch(kind, fields["dockerReference"])
    if kind == EXACT_REPOSITORY:
        _parse(fields["dockerRepository"], "dockerRepository")
        return IdentityMatch(kind, fields["dockerRepository"])
    if kind == REMAP_IDENTITY:
        for key in ("prefix", "signedPrefix"):
            if not check_prefix(fields[key]):
                raise ValueError(f"{key} {fields[key]!r} is not valid")
        return IdentityMatch(kind, prefix=fields["prefix"], signed_prefix=fields["signedPrefix"])
    return IdentityMatch(kind)


def _parse(text: str, what: str) -> Named:
    try:
        return parse_normalized(text)
    except BadReference as e:
        raise ValueError(f"invalid format of {what} {text!r}: {e}") from None


def _repo_digest_or_exact(intended: Named, signed: Named) -> bool:
    if signed.name_only:
        return False
    if intended.tag is not None:          # tag, or tag and digest: the same string
        return str(signed) == str(intended)
    if intended.digest is not None:
        return signed.name == intended.name
    return False


def remap(match: IdentityMatch, ref: Named) -> Named | None:
    name = ref.name
    if not (name == match.prefix or (name.startswith(match.prefix)
                                     and name[len(match.prefix):][:1] == "/")):
        return ref
    try:
        return parse_named(str(ref).replace(match.prefix, match.signed_prefix, 1))
    except BadReference:
        return None


def matches(match: IdentityMatch, intended: Named, signed_text: str) -> bool:
    """Whether a signature that names signed_text is good for intended."""
    try:
        signed = parse_normalized(signed_text)
    except BadReference:
        return False
    kind = match.type
    if kind == MATCH_EXACT:
        return not intended.name_only and not signed.name_only and str(signed) == str(intended)
    if kind == MATCH_REPO_DIGEST_OR_EXACT:
        return _repo_digest_or_exact(intended, signed)
    if kind == MATCH_REPOSITORY:
        return signed.name == intended.name
    if kind == EXACT_REFERENCE:
        wanted = parse_normalized(match.value)
        return not wanted.name_only and not signed.name_only and str(signed) == str(wanted)
    if kind == EXACT_REPOSITORY:
        return signed.name == parse_normalized(match.value).name
    if kind == REMAP_IDENTITY:
        remapped = remap(match, intended)
        return remapped is not None and _repo_digest_or_exact(remapped, signed)
    return False

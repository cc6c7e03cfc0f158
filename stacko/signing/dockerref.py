"""Docker references as containers/image reads them (docker/reference).

Signatures name images by reference (``host/repo:tag``), and policies match
those names: both must be normalised the way ``reference.ParseNormalizedNamed``
does it, or a signature skopeo accepts would be refused (or worse, the other
way round).  A name with no host is docker.io's, one component more is
``library/``.
"""
from __future__ import annotations

import re

from stacko.records import record

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
# Patterns, not compiled ones: re.fullmatch(PATTERN, text, re.ASCII) compiles each
# when first used (re's own cache), and a pull uses only REFERENCE (compiling all
# three at import cost every signed pull ~1.5 ms).
REFERENCE = rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?"
DOMAIN = _DOMAIN
NAME = _NAME
NAME_MAX = 255


class BadReference(ValueError):
    pass


@record
class Named:
    name: str                 # domain/path, normalised
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + \
            (f"@{self.digest}" if self.digest else "")

    @property
    def name_only(self) -> bool:
        return self.tag is None and self.digest is None

    @property
    def domain(self) -> str:
        return self.name.partition("/")[0]

    @property
    def path(self) -> str:
        return self.name.partition("/")[2]


def parse_named(text: str) -> Named:
    """reference.ParseNamed: text must already be in its normalised form."""
    ref = parse_normalized(text)
    if str(ref) != text:
        raise BadReference(f"{text!r} is not a normalised reference (it is {str(ref)!r})")
    return ref


def parse_normalized(text: str) -> Named:
    """reference.ParseNormalizedNamed."""
    if not isinstance(text, str) or not text:
        raise BadReference("empty reference")
    if len(text) == 64 and re.fullmatch(r"[a-f0-9]{64}", text):
        raise BadReference(f"invalid repository name {text!r}: cannot be a 64-byte hex string")
    first, slash, rest = text.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"
                     and first.lower() == first):
        domain, remainder = "docker.io", text
    else:
        domain, remainder = first, rest
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in remainder:
        remainder = "library/" + remainder
    name_part = re.split(r"[:@]", remainder, maxsplit=1)[0]
    if name_part.lower() != name_part:
        raise BadReference(f"invalid reference {text!r}: repository name must be lowercase")
    full = f"{domain}/{remainder}"
    m = re.fullmatch(REFERENCE, full, re.ASCII)
    if m is None:
        raise BadReference(f"invalid reference format: {text!r}")
    name, tag, digest = m.group(1), m.group(2), m.group(3)
    if len(name) > NAME_MAX:
        raise BadReference(f"repository name of {text!r} is longer than {NAME_MAX} characters")
    if digest is not None:
        algorithm, _, hex_part = digest.partition(":")
        if {"sha256": 64, "sha384": 96, "sha512": 128}.get(algorithm) != len(hex_part) \
                or hex_part.lower() != hex_part:
            raise BadReference(f"invalid digest in {text!r}")
    return Named(name, tag, digest)


def policy_identity(ref: Named) -> str:
    """The scope that names exactly this image (PolicyConfigurationIdentity)."""
    if ref.digest is not None:
        return f"{ref.name}@{ref.digest}"
    return f"{ref.name}:{ref.tag}"


def policy_namespaces(ref: Named) -> list[str]:
    """The wider scopes, most specific first: the repository, its parent
    namespaces, the host (with its port), then *.domain wildcards (without)."""
    found = []
    name = ref.name
    while True:
        found.append(name)
        cut = name.rfind("/")
        if cut == -1:
            break
        name = name[:cut]
    colon = name.find(":")
    if colon != -1:
        name = name[:colon]
    while "." in name:
        name = name[name.index(".") + 1:]
        found.append("*." + name)
    return found

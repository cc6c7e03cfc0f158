"""Docker references as containers/image reads them (docker/reference).

Signatures name images by reference (``host/repo:tag``), and policies match
those names: both must be normalised the way ``reference.ParseNormalizedNamed``
does it, or a signature skopeo accepts would be refused (or worse, the other
way round).  A name with no host is docker.io's, one component more is
``library/``.
"""
from __future__ import annotations

from stacko.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
# Patterns, not compiled ones: re.fullmatch(PATTERN, text, re.ASCII) compiles each
# when first used (re's own cache).  A pull's reference is read by split_reference,
# which tests/test_signing_policy.py holds to REFERENCE: compiling REFERENCE
# cost every signed pull ~1.5 ms.
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
    if len(text) == 64 and set(text) <= _LOWER_HEX:
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
    name_part = remainder.partition("@")[0].partition(":")[0]
    if name_part.lower() != name_part:
        raise BadReference(f"invalid reference {text!r}: repository name must be lowercase")
    parts = split_reference(f"{domain}/{remainder}")
    if parts is None:
        raise BadReference(f"invalid reference format: {text!r}")
    name, tag, digest = parts
    if len(name) > NAME_MAX:
        raise BadReference(f"repository name of {text!r} is longer than {NAME_MAX} characters")
    if digest is not None:
        algorithm, _, hex_part = digest.partition(":")
        if {"sha256": 64, "sha384": 96, "sha512": 128}.get(algorithm) != len(hex_part) \
                or hex_part.lower() != hex_part:
            raise BadReference(f"invalid digest in {text!r}")
    return Named(name, tag, digest)


# --- REFERENCE, read without compiling it -----------------------------------------------
_DIGITS = frozenset("0123456789")
_LOWER_HEX = frozenset("0123456789abcdef")
_HEX = frozenset("0123456789abcdefABCDEF")
_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz") | _DIGITS
_ALNUM = _LOWER_ALNUM | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WORD = _ALNUM | {"_"}
_TAG_CHARS = _WORD | {".", "-"}


def split_reference(text: str) -> tuple[str, str | None, str | None] | None:
    """(name, tag, digest) as re.fullmatch(REFERENCE, text, re.ASCII) groups
    them, or None where it does not match.  No part of the grammar holds '@',
    a tag and a digest hold no '/', and a name holds ':' only in its domain,
    before its first '/': so the parts are found by where those characters are."""
    head, at, digest = text.partition("@")
    if at and not _is_digest(digest):
        return None
    slash = head.rfind("/")
    name, colon, tag = head[slash + 1:].partition(":")
    name = head[:slash + 1] + name
    if colon and not (0 < len(tag) <= 128 and tag[0] in _WORD and set(tag) <= _TAG_CHARS):
        return None
    segments = name.split("/")
    if not all(map(_is_component, segments[1:])) or not (
            _is_component(segments[0]) or (len(segments) > 1 and _is_domain(segments[0]))):
        return None
    return name, tag if colon else None, digest if at else None


def _is_component(text: str) -> bool:
    """[a-z0-9]+ joined by '.', '_', '__' or a run of '-'."""
    return _joined(text, _LOWER_ALNUM, lambda word: True,
                   lambda sep: sep in (".", "_", "__") or set(sep) == {"-"})


def _joined(text: str, chars: frozenset, word_ok: Callable[[str], bool],
            sep_ok: Callable[[str], bool]) -> bool:
    """Whether text is runs of chars (words), each one word_ok accepts, joined
    by runs of other characters, each one sep_ok accepts."""
    if not text or text[0] not in chars or text[-1] not in chars:
        return False
    run = text[0]
    for c in text[1:]:
        if (c in chars) == (run[-1] in chars):
            run += c
            continue
        if not (word_ok if run[-1] in chars else sep_ok)(run):
            return False
        run = c
    return word_ok(run)


def _is_domain(text: str) -> bool:
    """Labels of [a-zA-Z0-9-] (no '-' at either end) joined by '.', or an
    [IPv6] address of [a-fA-F0-9:]; then an optional :port."""
    if text.startswith("["):
        address, bracket, port = text[1:].partition("]")
        if not bracket or not address or not set(address) <= _HEX | {":"}:
            return False
    else:
        host, colon, port = text.partition(":")
        if colon:
            port = ":" + port
        if not all(label and label[0] != "-" and label[-1] != "-" and set(label) <= _ALNUM | {"-"}
                   for label in host.split(".")):
            return False
    return not port or (port[0] == ":" and len(port) > 1 and set(port[1:]) <= _DIGITS)


def _is_digest(text: str) -> bool:
    """Letters-and-digits words, each starting with a letter, joined by one of
    '-_+.', then ':' and 32 or more hex digits."""
    algorithm, colon, hex_part = text.partition(":")
    if not colon or len(hex_part) < 32 or not set(hex_part) <= _HEX:
        return False
    return _joined(algorithm, _ALNUM, lambda word: word[0].isalpha(),
                   lambda sep: sep in ("-", "_", "+", "."))


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

"""REF: ``[docker://]HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]``.

The registry host is never guessed: the first component names a host only when
it holds a dot or a colon or is ``localhost`` (Docker's rule), so ``debian:12``
or ``library/debian`` are refused rather than sent to some default registry.
"""
from __future__ import annotations

from stacko.errors import UsageError
from stacko.records import record
from stacko.validate import is_digest

FORM = "[docker://]HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]"
EXAMPLE = "registry.example.com:5000/tools/base:1.0"

# The distribution spec's grammar, checked with str methods: a REF is parsed
# by update-stackpoint's look, which otherwise needs neither re nor enum (~4 ms
# of its start).  tests/test_lean.py holds each check to the expression it
# replaces:
#   component  [a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*
#   repository component(?:/component)*
#   tag        [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
#   host       (?:label(?:\.label)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?
#   label      [A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?
LOWER = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
DIGITS = frozenset("0123456789")
TAG_CHARS = ALNUM | frozenset("_.-")
LABEL_CHARS = ALNUM | frozenset("-")
ADDRESS_CHARS = frozenset("0123456789abcdefABCDEF:.")


def is_component(text: str) -> bool:
    """One component of a repository name: runs of [a-z0-9] joined by ".",
    "_", "__" or dashes."""
    if not text or text[0] not in LOWER or text[-1] not in LOWER:
        return False
    run = ""
    for c in text:
        if c in LOWER:
            if run and run not in (".", "_", "__") and run.strip("-"):
                return False
            run = ""
        elif c in "._-":
            run += c
        else:
            return False
    return True


def is_repository(text: str) -> bool:
    return all(is_component(part) for part in text.split("/"))


def is_tag(text: str) -> bool:
    return 0 < len(text) <= 128 and text[0] != "." and text[0] != "-" \
        and TAG_CHARS.issuperset(text)


def is_host(text: str) -> bool:
    """A host name or a bracketed address, with an optional port of 1-5 digits."""
    if text.startswith("["):
        address, bracket, port = text[1:].partition("]")
        if not bracket or not address or not ADDRESS_CHARS.issuperset(address):
            return False
    else:
        name, colon, port = text.partition(":")
        if not all(label and label[0] != "-" and label[-1] != "-"
                   and LABEL_CHARS.issuperset(label) for label in name.split(".")):
            return False
        port = colon + port
    if not port:
        return True
    return port[0] == ":" and 1 < len(port) <= 6 and DIGITS.issuperset(port[1:])


@record
class Reference:
    host: str             # as written, with its port: "host:5000", "[::1]:5000"
    repo: str
    tag: str | None       # None when a digest names the image
    digest: str | None

    @property
    def reference(self) -> str:
        """What goes after /manifests/ in the API."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return f"{self.host}/{self.repo}" + (f"@{self.digest}" if self.digest
                                              else f":{self.tag}")


def bad(text: str, why: str) -> UsageError:
    return UsageError(f"malformed image reference {text!r}: {why}",
                      hint=f"write {FORM}, e.g. {EXAMPLE}")


def parse(text: str) -> Reference:
    rest = text[len("docker://"):] if text.startswith("docker://") else text
    if "://" in rest:
        raise bad(text, "only the docker:// transport is read")
    host, slash, path = rest.partition("/")
    if not slash:
        raise bad(text, "it names no registry host; stacko never guesses one")
    if not path:
        raise bad(text, "it names no repository")
    if not ("." in host or ":" in host or host == "localhost"):
        raise bad(text, f"{host!r} is no registry host (a host has a dot or a port, or is "
                        "localhost); stacko never guesses one")
    if not is_host(host):
        raise bad(text, f"{host!r} is not a host name with an optional port")
    port = host.rpartition(":")[2] if not host.endswith("]") and ":" in host else None
    if port is not None and not 0 < int(port) < 65536:
        raise bad(text, f"port {port} is out of range")
    digest = None
    if "@" in path:
        path, _, digest = path.partition("@")
        if not is_digest(digest):
            raise bad(text, f"{digest!r} is not a sha256 digest (sha256: and 64 hex digits)")
    tag = None
    last = path.rpartition("/")[2]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not is_tag(tag):
            raise bad(text, f"{tag!r} is not a valid tag")
    if len(path) > 255 or not is_repository(path):
        raise bad(text, f"{path!r} is not a valid repository name (lower-case letters, "
                        "digits and . _ - separators, components joined by /)")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(host=host, repo=path, tag=tag, digest=digest)

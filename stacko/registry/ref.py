"""REF: ``[docker://]HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]``.

The registry host is never guessed: the first component names a host only when
it holds a dot or a colon or is ``localhost`` (Docker's rule), so ``debian:12``
or ``library/debian`` are refused rather than sent to some default registry.
"""
from __future__ import annotations

import re         # json, which every command that parses a REF imports, imports it too

from stacko.errors import UsageError
from stacko.records import record

FORM = "[docker://]HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]"
EXAMPLE = "registry.example.com:5000/tools/base:1.0"
# The distribution spec's grammar for repository names and tags.
COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPO_RE = re.compile(rf"{COMPONENT}(?:/{COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
                     r"(?::[0-9]{1,5})?")


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
    if not HOST_RE.fullmatch(host):
        raise bad(text, f"{host!r} is not a host name with an optional port")
    port = host.rpartition(":")[2] if not host.endswith("]") and ":" in host else None
    if port is not None and not 0 < int(port) < 65536:
        raise bad(text, f"port {port} is out of range")
    digest = None
    if "@" in path:
        path, _, digest = path.partition("@")
        if not DIGEST_RE.fullmatch(digest):
            raise bad(text, f"{digest!r} is not a sha256 digest (sha256: and 64 hex digits)")
    tag = None
    last = path.rpartition("/")[2]
    if ":" in last:
        path, _, tag = path.rpartition(":")
        if not TAG_RE.fullmatch(tag):
            raise bad(text, f"{tag!r} is not a valid tag")
    if not REPO_RE.fullmatch(path) or len(path) > 255:
        raise bad(text, f"{path!r} is not a valid repository name (lower-case letters, "
                        "digits and . _ - separators, components joined by /)")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(host=host, repo=path, tag=tag, digest=digest)

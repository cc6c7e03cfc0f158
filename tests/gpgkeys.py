"""GnuPG keys for the signing tests: a home of their own with alice, bob and
carol (carol's secret key under PASSPHRASE), each exported to NAME.pub."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, Iterator

import pytest

PASSPHRASE = "correct horse battery staple"


class Keys:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.fpr: Dict[str, str] = {}
        self.pub: Dict[str, Path] = {}

    @property
    def env(self) -> Dict[str, str]:
        return {"GNUPGHOME": str(self.home)}

    def gpg(self, *argv: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["gpg", "--batch", "--no-tty", *argv], check=True,
                              capture_output=True, env=dict(os.environ, **self.env), **kw)

    def make(self, name: str, passphrase: str = "") -> None:
        if passphrase:
            pw = self.home.parent / f"{name}.pass"
            pw.write_text(passphrase + "\n")
            self.gpg("--pinentry-mode", "loopback", "--passphrase-file", str(pw),
                     "--quick-gen-key", f"{name} <{name}@example.com>", "ed25519", "sign",
                     "never")
        else:
            self.gpg("--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.com>",
                     "ed25519", "sign", "never")
        listing = self.gpg("--with-colons", "--list-secret-keys", f"{name}@example.com").stdout
        self.fpr[name] = next(line.split(":")[9] for line in listing.decode().splitlines()
                              if line.startswith("fpr:"))
        self.pub[name] = self.home.parent / f"{name}.pub"
        self.pub[name].write_bytes(self.gpg("--export", self.fpr[name]).stdout)

    def sign(self, name: str, data: bytes) -> bytes:
        return self.gpg("--local-user", self.fpr[name], "--sign", input=data).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    base = tmp_path_factory.mktemp("gpg")
    home = base / "home"
    home.mkdir(mode=0o700)
    k = Keys(home)
    for name in ("alice", "bob"):
        k.make(name)
    k.make("carol", PASSPHRASE)
    yield k
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=dict(os.environ, **k.env),
                   capture_output=True)

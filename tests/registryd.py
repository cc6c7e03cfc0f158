"""A real registry for the tests: Debian's docker-registry (distribution 2.8) on
127.0.0.1 and a free port, plain HTTP or TLS (a self-signed certificate made
with openssl) with htpasswd users.  Its access log counts what clients fetched."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import List, Optional

USER, PASSWORD = "admin", "s3cret-pass"
ACCESS = re.compile(r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[0-9.]+" (\d{3})')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port on which nothing listens (taken free, then let go)."""
    return free_port()


def available() -> bool:
    return shutil.which("docker-registry") is not None


class Registry:
    def __init__(self, base: Path, tls: bool = False) -> None:
        self.base = base
        self.tls = tls
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = base / "registry.log"
        self.certs = base / "certs"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Registry":
        self.base.mkdir(parents=True, exist_ok=True)
        config = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.base / 'data'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if self.tls:
            self.certs.mkdir(exist_ok=True)
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", self.base / "domain.key", "-out", self.certs / "ca.crt",
                            "-days", "2", "-subj", "/CN=127.0.0.1",
                            "-addext", "subjectAltName=IP:127.0.0.1"],
                           check=True, capture_output=True)
            subprocess.run(["htpasswd", "-Bbc", self.base / "htpasswd", USER, PASSWORD],
                           check=True, capture_output=True)
            config += ["  tls:",
                       f"    certificate: {self.certs / 'ca.crt'}",
                       f"    key: {self.base / 'domain.key'}",
                       "auth:",
                       "  htpasswd:",
                       "    realm: stacko-tests",
                       f"    path: {self.base / 'htpasswd'}"]
        (self.base / "config.yml").write_text("\n".join(config) + "\n")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["docker-registry", "serve", str(self.base / "config.yml")],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # --- what clients asked -------------------------------------------------------
    def mark(self) -> int:
        """A point in the log: requests() after it."""
        return self.log.stat().st_size

    def requests(self, since: int = 0) -> List[tuple]:
        with open(self.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        return [(m.group(1), m.group(2), int(m.group(3))) for m in ACCESS.finditer(text)]

    def blob_gets(self, since: int = 0) -> List[str]:
        """The digests of blobs fetched (GET answered 200 or 206) since a mark."""
        return [path.rpartition("/")[2] for method, path, status in self.requests(since)
                if method == "GET" and "/blobs/" in path and status in (200, 206)]

    def blob_puts(self, since: int = 0) -> List[str]:
        return [path for method, path, status in self.requests(since)
                if method == "PUT" and "/blobs/uploads/" in path]

    # --- skopeo options to reach it ---------------------------------------------------
    def skopeo_dest(self) -> List[str]:
        if not self.tls:
            return ["--dest-tls-verify=false"]
        return [f"--dest-cert-dir={self.certs}", f"--dest-creds={USER}:{PASSWORD}"]

    def skopeo_src(self) -> List[str]:
        if not self.tls:
            return ["--src-tls-verify=false"]
        return [f"--src-cert-dir={self.certs}", f"--src-creds={USER}:{PASSWORD}"]

    def stacko_options(self) -> List[str]:
        if not self.tls:
            return ["--tls-verify=false"]
        return ["--cert-dir", str(self.certs), "--creds", f"{USER}:{PASSWORD}"]

    def catalog_ok(self) -> bool:
        try:
            urllib.request.urlopen(f"http://{self.host}/v2/", timeout=5).read()
            return True
        except OSError:
            return False


def skopeo_push(registry: Registry, source: str, ref: str) -> None:
    """skopeo copy SOURCE docker://HOST/REF."""
    subprocess.run(["skopeo", "copy", "-q", *registry.skopeo_dest(), source,
                    f"docker://{registry.host}/{ref}"], check=True, capture_output=True,
                   env=dict(os.environ, HOME=str(registry.base)))

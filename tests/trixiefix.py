"""skopeo 1.18 and cosign 2.5 from a Debian 13 (trixie) chroot, for the sigstore
interop tests: Debian 12's skopeo 1.9 is built with sigstore disabled.

tests/trixie-chroot.sh builds the chroot once (install-deps.sh runs it; the
fixture runs it too when the chroot is missing, so that pytest alone works).
Each skopeo runs in a mount namespace of its own, with one directory of the
test bound at /mnt inside; the chroot shares the network, so it reaches the
registry fixture on 127.0.0.1."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

HERE = Path(__file__).resolve().parent
TRIXIE = Path(os.environ.get("STACKO_TRIXIE", "/var/cache/stacko-tests/trixie"))
INSIDE = "/mnt"


def ready() -> bool:
    return (TRIXIE / ".stacko-ready").exists() and all(
        (TRIXIE / "usr/bin" / tool).exists() for tool in ("skopeo", "cosign"))


class Trixie:
    def __init__(self, work: Path) -> None:
        self.work = work            # bound at /mnt in the chroot

    def path(self, host: Path) -> str:
        """The name inside the chroot of a path under work."""
        return INSIDE + "/" + str(host.relative_to(self.work))

    def skopeo(self, *args: str, rc: Optional[int] = 0) -> subprocess.CompletedProcess:
        return self.run("skopeo", *args, rc=rc)

    def cosign(self, *args: str, rc: Optional[int] = 0,
               password: str = "") -> subprocess.CompletedProcess:
        """cosign in /mnt.  COSIGN_PASSWORD is how it takes a key's passphrase
        without a terminal: read from a file in the chroot's shell, so that it
        is in no process's arguments."""
        (self.work / ".cosign-password").write_text(password)
        return self.run("cosign", *args, rc=rc,
                        prelude='COSIGN_PASSWORD=$(cat /mnt/.cosign-password); '
                                'export COSIGN_PASSWORD; ')

    def run(self, tool: str, *args: str, rc: Optional[int] = 0,
            prelude: str = "") -> subprocess.CompletedProcess:
        script = ('mount --bind "$1" "$2/mnt" && root=$2 && shift 2 && '
                  'exec chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root '
                  'LC_ALL=C.UTF-8 "$@"')
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                            "sh", str(self.work), str(TRIXIE), "sh", "-c",
                            prelude + 'cd /mnt && exec "$@"', "sh", tool, *args],
                           capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
        if rc is not None:
            assert r.returncode == rc, (tool, args, r.returncode, r.stdout, r.stderr)
        if os.environ.get("STACKO_SHOW_SKOPEO"):
            print(tool, args, r.returncode, r.stderr)
        return r

    def version(self) -> str:
        return self.skopeo("--version").stdout.strip()


@pytest.fixture(scope="session")
def trixie_root() -> Path:
    if os.geteuid() != 0:
        pytest.skip("skopeo 1.18 runs in a chroot: run the tests as root (make test)")
    if not ready():
        subprocess.run([str(HERE / "trixie-chroot.sh"), str(TRIXIE)], check=True, timeout=3600)
    assert ready(), f"tests/trixie-chroot.sh did not make {TRIXIE}"
    return TRIXIE


@pytest.fixture
def trixie(trixie_root: Path, tmp_path: Path) -> Iterator[Trixie]:
    work = tmp_path / "in-chroot"
    work.mkdir()
    yield Trixie(work)


def skopeo_lines(r: subprocess.CompletedProcess) -> List[str]:
    return (r.stdout + r.stderr).splitlines()

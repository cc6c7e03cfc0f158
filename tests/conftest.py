"""Shared fixtures: a temporary state root, and the real stacko CLI.

Tests that mount are marked ``mounts``; they need root and run in a private
mount namespace.  `make test` starts pytest under ``unshare -m``; when pytest
is started some other way as root, this file makes the namespace itself, so
that no test can ever mount on the host.
"""
from __future__ import annotations

import ctypes
import io
import os
import random
import tarfile
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import pytest

IS_ROOT = os.geteuid() == 0
CLONE_NEWNS = 0x00020000


def _enter_private_namespace() -> None:
    # Unsharing again under `unshare -m` costs nothing and needs no guess about
    # whether the namespace we were started in is the host's.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)


if IS_ROOT:
    _enter_private_namespace()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mounts: mounts for real; needs root")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="mounts for real: run the tests as root (make test)")
    for item in items:
        if "mounts" in item.keywords:
            item.add_marker(skip)


@dataclass
class Result:
    argv: Sequence[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.strip()


def _mounts_under(path: str) -> list:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split(" ")[4].replace("\\040", " ").replace("\\011", "\t") \
                .replace("\\012", "\n").replace("\\134", "\\")
            if mp == path or mp.startswith(path.rstrip("/") + "/"):
                found.append(mp)
    return found


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch directory; everything mounted under it is unmounted afterwards."""
    yield tmp_path
    for mp in reversed(_mounts_under(str(tmp_path))):
        subprocess.run(["umount", "-l", mp], capture_output=True)


@pytest.fixture
def root(workdir: Path) -> Path:
    """The state root of one test (with a space in its path, as admins' paths may have)."""
    return workdir / "state root"


Runner = Callable[..., Result]


def run_stacko(root: Optional[Path], *args: str, rc: Optional[int] = 0,
               env: Optional[Dict[str, str]] = None, input: Optional[bytes] = None,
               user: Optional[int] = None) -> Result:
    argv = [sys.executable, "-m", "stacko"] + (["--root", str(root)] if root else []) + list(args)
    full_env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    full_env.update(env or {})
    proc = subprocess.run(argv, input=input, capture_output=True, env=full_env,
                          user=user, timeout=600)
    result = Result(argv, proc.returncode, proc.stdout.decode(errors="replace"),
                    proc.stderr.decode(errors="replace"))
    assert "Traceback" not in result.stderr, result.stderr
    if rc is not None:
        assert result.returncode == rc, (
            f"{' '.join(args)}: exit {result.returncode}, wanted {rc}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}")
    quiet_no = result.returncode == 1 and "is-stackpoint-mounted" in args   # "not mounted"
    if result.returncode in (1, 2) and not quiet_no:
        assert result.stderr.startswith(("stacko: error:", "usage:")) or \
            "stacko: error:" in result.stderr, result.stderr
    return result


@pytest.fixture
def stacko(root: Path) -> Runner:
    """Run the real CLI against this test's root; checks the exit status and that
    no traceback was printed.  ``rc=None`` accepts any status."""
    def runner(*args: str, **kwargs) -> Result:
        return run_stacko(root, *args, **kwargs)
    return runner


# `python -c EXIT_PROBE ARGS...` runs stacko's console script, and ends its
# stderr with os._exit(STATUS) when the command ended without the teardown
# (cli.quick_exit_safe).
EXIT_PROBE = ("import os, sys\n"
              "real = os._exit\n"
              "def ending(status):\n"
              "    sys.stderr.write(f'os._exit({status})'); sys.stderr.flush(); real(status)\n"
              "os._exit = ending\n"
              "from stacko.cli import console_main; console_main()")


def snapshot(root: Path) -> Dict[str, object]:
    """Everything under a root that a refused command must leave alone: metadata
    bytes, the set of layer directories and the mounts."""
    state: Dict[str, object] = {}
    for name in ("images.json", "stackpoints.json"):
        p = root / name
        state[name] = p.read_bytes() if p.exists() else None
    for sub in ("l", "w"):
        d = root / sub
        state[sub] = sorted(os.listdir(d)) if d.exists() else []
    state["mounts"] = _mounts_under(str(root))
    return state


def populate(stacko: Runner, image: str, files: Dict[str, str], parent: Optional[str] = None) -> None:
    """new-image, edit-image, write files, close-image."""
    stacko("new-image", image, *([parent] if parent else []))
    directory = Path(stacko("edit-image", image).out)
    for rel, text in files.items():
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    stacko("close-image", image)


def du(path: Path) -> int:
    """Allocated bytes of path and what is under it, each inode once, as
    `du -s -B1` counts them: what stacko df and an image's recorded size count."""
    seen, total = set(), 0
    for directory, dirs, files in os.walk(path):
        for name in [""] + files:
            st = os.lstat(os.path.join(directory, name) if name else directory)
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def random_tar(path: Path, files: int, size: int, dirs: int = 0, seed: int = 1) -> Path:
    """A rootfs tarball of incompressible files (in dirs directories when dirs > 0)."""
    rng = random.Random(seed)
    with tarfile.open(path, "w") as tar:
        for n in range(files):
            data = rng.randbytes(size)
            info = tarfile.TarInfo(f"d{n % dirs}/f{n}" if dirs else f"f{n}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path

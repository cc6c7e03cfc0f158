"""Helpers shared by the bench_*.py modules: timing, scratch roots, stacks.

Benchmarks run the real CLI as a subprocess (what a user pays), but build their
fixtures in-process through the library, which is much faster than hundreds
of subprocesses.  Nothing here is a test: no figure is ever asserted.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:      # `python3 bench/run.py` without an installed stacko
    sys.path.insert(0, REPO)

from stacko import images, mounttable  # noqa: E402  (needs the path above)
from stacko.state import Store  # noqa: E402

#: $BENCH_REPEAT scales every module's repetitions (1.0: the default counts).
SCALE = float(os.environ.get("BENCH_REPEAT", "1") or "1")


def repeats(default: int) -> int:
    return max(3, int(round(default * SCALE)))


# --- running commands ----------------------------------------------------------
def stacko_argv() -> List[str]:
    """The installed console script beside this interpreter, else `python -m stacko`."""
    script = os.path.join(os.path.dirname(sys.executable), "stacko")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "stacko"]


def child_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C.UTF-8"
    # `python -m stacko` from a checkout that is not installed still finds the package.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    # An installed stacko has its bytecode compiled; without this, a shell that
    # sets PYTHONDONTWRITEBYTECODE makes every run of a checkout compile it anew.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if extra:
        env.update(extra)
    return env


def run(argv: Sequence[str], *, cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
    """Run argv, output captured; a failure raises with the command's stderr."""
    proc = subprocess.run(list(argv), cwd=cwd, env=child_env(env), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err}")
    return proc


def timed(func: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


# --- repeated, interleaved timing ------------------------------------------------
def interleave(cases: Mapping[str, Callable[[], Mapping[str, float]]], rounds: int,
               warmup: int = 2) -> Dict[str, List[float]]:
    """Run every case once per round, in a fresh random order, and collect its timings.

    A case returns {label: seconds} (one call may time several commands, such
    as a mount and its umount).  Interleaving spreads a noisy neighbour or a
    CPU frequency change over all cases alike instead of one of them; the
    first `warmup` rounds fill the page cache and are dropped.
    """
    samples: Dict[str, List[float]] = {}
    names = list(cases)
    for n in range(warmup + rounds):
        random.shuffle(names)
        for name in names:
            for label, seconds in cases[name]().items():
                if n >= warmup:
                    samples.setdefault(label, []).append(seconds)
    return samples


def median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000.0


def spread_ms(values: Sequence[float]) -> float:
    """Half the interquartile range, in ms: how far a typical run strays."""
    if len(values) < 4:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) * 500.0


def row(what: str, stacko: float, baseline_name: Optional[str], baseline: Optional[float],
        unit: str, goal: str, met: Optional[bool], **extra: object) -> Dict[str, object]:
    """One line of a module's table, as bench/run.py expects it."""
    return {"what": what, "stacko": round(stacko, 3), "baseline_name": baseline_name,
            "baseline": None if baseline is None else round(baseline, 3), "unit": unit,
            "goal": goal, "met": met, **extra}


# --- scratch roots -----------------------------------------------------------------
@contextlib.contextmanager
def scratch_root(tag: str) -> Iterator[str]:
    """A fresh directory under /tmp for a state root; unmounted and removed afterwards."""
    path = tempfile.mkdtemp(prefix=f"stacko-bench-{tag}-", dir="/tmp")
    try:
        yield path
    finally:
        unmount_under(path)
        if not mounttable.mounts_under(os.path.realpath(path)):   # never rmtree across a mount
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def loop_ext4(tag: str, size: int = 3 << 30) -> Iterator["os.PathLike[str]"]:
    """A fresh ext4 of size bytes, loop-mounted (its backing file in /dev/shm
    when that has room, else under /tmp; $BENCH_LOOP_DIR chooses): both sides
    of a comparison write to the same kind of fresh filesystem.  Each run
    should write into a directory of its own and nothing be deleted between
    runs: ext4 creates files several times slower in a block group that has
    just seen mass deletes, which would favour whichever side ran first."""
    from pathlib import Path
    where = os.environ.get("BENCH_LOOP_DIR")
    if where is None and os.path.isdir("/dev/shm"):
        shm = os.statvfs("/dev/shm")
        where = "/dev/shm" if shm.f_bavail * shm.f_frsize > size + (1 << 30) else None
    with tempfile.TemporaryDirectory(prefix=f"stacko-bench-{tag}-", dir=where) as scratch:
        image = os.path.join(scratch, "fs.img")
        with open(image, "wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
        fs = Path(scratch) / "fs"
        fs.mkdir()
        subprocess.run(["mount", "-o", "loop", image, str(fs)], check=True)
        try:
            yield fs
        finally:
            subprocess.run(["umount", "-R", "-l", str(fs)], capture_output=True)


def unmount_under(path: str) -> None:
    """Detach whatever a failed run left mounted beneath path, deepest first."""
    for m in reversed(mounttable.mounts_under(os.path.realpath(path))):
        subprocess.run(["umount", "--lazy", m.mount_point], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise RuntimeError(f"{what} mounts overlays and needs root: run `make bench` as root")


# --- building fixtures fast ------------------------------------------------------------
@contextlib.contextmanager
def mount_table_snapshot() -> Iterator[None]:
    """Serve stacko's mount-table reads from one snapshot while building fixtures.

    new_image() re-reads /proc/self/mountinfo for every ancestor (to refuse
    stacking on an image open for editing), which makes a 500-deep chain
    quadratic.  While a build mounts nothing the table cannot change, so one
    read is the same answer.
    """
    table = mounttable.mounts()
    real = mounttable.mounts
    mounttable.mounts = lambda: list(table)  # type: ignore[assignment]
    try:
        yield
    finally:
        mounttable.mounts = real  # type: ignore[assignment]


def build_stack(store: Store, depth: int, prefix: str, parent: Optional[str] = None) -> List[str]:
    """A chain of depth images named <prefix>-0001 … (bottom first); returns the names."""
    names: List[str] = []
    with store.locked(exclusive=True), mount_table_snapshot():
        for i in range(1, depth + 1):
            name = f"{prefix}-{i:04d}"
            images.new_image(store, name, parent)
            names.append(name)
            parent = name
    return names


def build_forest(store: Store, count: int, prefix: str) -> List[str]:
    """count images as a binary forest (parent of n is n // 2, so depth ~log2 count).

    Written as one metadata save: new_image() rewrites the whole images.json
    each time, so 1,000 calls would spend most of their time re-encoding JSON.
    The records are the ones new_image() writes.
    """
    from stacko.names import check_name
    from stacko.records import Image

    with store.locked(exclusive=True):
        existing = store.load_images()
        added: Dict[str, Image] = {}
        names = [f"{prefix}-{i:04d}" for i in range(1, count + 1)]
        for i, name in enumerate(names, start=1):
            parent = names[i // 2 - 1] if i > 1 else None
            added[check_name(name)] = Image(name=name, layer=store.new_layer(),
                                            parent=parent, created=images.now())
        store.save_images({**existing, **added})
    return names


# --- the machine -------------------------------------------------------------------
def machine_info() -> Dict[str, object]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    mount_version = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        mount_version = subprocess.run(["mount", "--version"], stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True).stdout.strip()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"kernel": os.uname().release, "machine": os.uname().machine, "cpu": cpu,
            "nproc": os.cpu_count(), "python": sys.version.split()[0],
            "executable": sys.executable, "mount": mount_version,
            "loadavg": list(load) if load else None,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_oci_archive(target: "os.PathLike[str]", layer_tars: Sequence[bytes], name: str,
                      compress: Optional[Callable[[bytes], bytes]] = None,
                      media_type: str = "application/vnd.oci.image.layer.v1.tar") -> None:
    """An oci-archive (OCI layout in a tar) of the given layer tars, bottom first;
    compress (e.g. gzip) is applied to each layer blob, media_type names it."""
    blobs: Dict[str, bytes] = {}

    def put(data: bytes) -> Dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": "sha256:" + digest, "size": len(data)}

    descriptors = [{"mediaType": media_type, **put(compress(t) if compress else t)}
                   for t in layer_tars]
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in layer_tars]
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **put(json.dumps(config).encode())},
                "layers": descriptors}
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **put(json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": name}}]}
    members = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
               "index.json": json.dumps(index).encode()}
    members.update({f"blobs/sha256/{d}": data for d, data in blobs.items()})
    with tarfile.open(target, "w") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))


def run_status(argv: Sequence[str]) -> int:
    """Run argv, output discarded; its exit status (for commands whose status is
    their answer, such as is-stackpoint-mounted)."""
    return subprocess.run(list(argv), env=child_env(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def import_times(command: Sequence[str]) -> Dict[str, float]:
    """Self time (ms) of each module that `python -X importtime COMMAND...` imports."""
    proc = run([sys.executable, "-X", "importtime", *command])
    costs: Dict[str, float] = {}
    for line in proc.stderr.decode("utf-8", "replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            self_us, _, name = line[len("import time:"):].split("|")
            if self_us.strip().isdigit():
                costs[name.strip()] = int(self_us) / 1000.0
    return costs

"""Crash tests: SIGKILL every state-changing command at many moments.

For each command, a fresh root is built in-process (fast), the real command is
started as its own process and killed after a delay drawn (fixed seed) from the
span of the command's own measured run, past the interpreter's start-up.  After
every kill:

* the listings work;
* nothing half-made is listed: every listed image and instance has its layer,
  and `check` reports only leftovers (never a missing directory);
* the stackpoint mounts and shows either the old or the new instance in full;
* repeating the command succeeds without any repair (unless the kill came
  after it had done its work);
* `check --repair` then fixes every leftover and a second `check` is clean.

KILLS kills per command (STACKO_CRASH_KILLS overrides it); the figures are
printed at the end of each test (pytest -s shows them).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from conftest import _mounts_under, random_tar

pytestmark = pytest.mark.mounts

KILLS = int(os.environ.get("STACKO_CRASH_KILLS", "24"))
REPO = str(Path(__file__).resolve().parent.parent)


# --- running stacko -----------------------------------------------------------------
def sto(root: Path, *args: str, rc: Optional[int] = 0) -> Tuple[int, str, str]:
    """Run the CLI in-process (no interpreter start-up): (status, stdout, stderr)."""
    from stacko.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["--root", str(root), *args])
    if rc is not None:
        assert status == rc, f"{args}: exit {status}, wanted {rc}\n{out.getvalue()}{err.getvalue()}"
    return status, out.getvalue(), err.getvalue()


def spawn(root: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen([sys.executable, "-m", "stacko", "--root", str(root), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def timed_run(root: Path, *args: str) -> float:
    start = time.monotonic()
    proc = spawn(root, *args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return time.monotonic() - start


def write(directory: Path, files: Dict[str, str]) -> None:
    for rel, text in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text)


def tree(directory: Path) -> Dict[str, str]:
    found = {}
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            path = Path(dirpath) / name
            found[str(path.relative_to(directory))] = path.read_text()
    return found


def image(root: Path, name: str, files: Dict[str, str], parent: Optional[str] = None) -> None:
    sto(root, "new-image", name, *([parent] if parent else []))
    _, out, _ = sto(root, "edit-image", name)
    write(Path(out.strip()), files)
    sto(root, "close-image", name)


def images_listed(root: Path) -> List[str]:
    return sto(root, "list-images")[1].split()


def point_info(root: Path, name: str) -> Optional[dict]:
    for info in json.loads(sto(root, "list-stackpoints", "--json")[1]):
        if info["name"] == name:
            return info
    return None


def unmount_all(root: Path) -> None:
    for mp in reversed(_mounts_under(str(root))):
        subprocess.run(["umount", "-l", mp], capture_output=True)


# --- the scenarios -----------------------------------------------------------------
BASE = {"etc/os": "base"}
OLD = {"app/version": "1", "app/old-only": "old"}
NEW = {"app/version": "2", "app/new-only": "new"}
USER_OLD = {"srv/data": "written in the old instance"}
USER_NEW = {"srv/data": "written in the new instance", "srv/more": "x"}


def shows(root: Path, point: str) -> Dict[str, str]:
    _, out, _ = sto(root, "mount-stackpoint", point)
    return tree(Path(out.strip()))


class Scenario:
    """setup(root) builds the state before; argv is the command; done(root) says
    whether its effect is there; verify(root, done) checks the state after a kill."""
    argv: Tuple[str, ...] = ()

    def setup(self, root: Path) -> None:
        image(root, "base", BASE)

    def done(self, root: Path) -> bool:
        raise NotImplementedError

    def verify(self, root: Path, done: bool) -> None:
        pass


class NewImage(Scenario):
    argv = ("new-image", "fresh", "base")

    def done(self, root: Path) -> bool:
        return "fresh" in images_listed(root)


class CloseImage(Scenario):
    argv = ("close-image", "draft")

    def setup(self, root: Path) -> None:
        super().setup(root)
        sto(root, "new-image", "draft", "base")
        write(Path(sto(root, "edit-image", "draft")[1].strip()), NEW)

    def done(self, root: Path) -> bool:
        return not os.path.ismount(root / "edit" / "draft")

    def verify(self, root: Path, done: bool) -> None:
        sto(root, "close-image", "draft")
        sto(root, "new-stackpoint", "look", "draft")
        assert shows(root, "look") == {**BASE, **NEW}


class DeleteImage(Scenario):
    argv = ("delete-image", "doomed")

    def setup(self, root: Path) -> None:
        super().setup(root)
        image(root, "doomed", {f"f{n}/data": "x" * 1000 for n in range(100)}, "base")

    def done(self, root: Path) -> bool:
        return "doomed" not in images_listed(root)

    def verify(self, root: Path, done: bool) -> None:
        if not done:     # still listed: still whole
            sto(root, "new-stackpoint", "look", "doomed")
            assert len(shows(root, "look")) == 101
            sto(root, "umount-stackpoint", "look")
            sto(root, "delete-stackpoint", "look")


class NewStackpoint(Scenario):
    argv = ("new-stackpoint", "sp", "base")

    def done(self, root: Path) -> bool:
        return point_info(root, "sp") is not None

    def verify(self, root: Path, done: bool) -> None:
        if done:
            assert shows(root, "sp") == BASE


class Switching(Scenario):
    """A mounted stackpoint on "old" (with user data in its instance)."""

    def setup(self, root: Path) -> None:
        super().setup(root)
        image(root, "old", OLD, "base")
        image(root, "new", NEW, "base")
        sto(root, "new-stackpoint", "sp", "old")
        write(Path(sto(root, "mount-stackpoint", "sp")[1].strip()), USER_OLD)

    def verify(self, root: Path, done: bool) -> None:
        info = point_info(root, "sp")
        assert info is not None
        seen = shows(root, "sp")
        wanted = {"old": {**BASE, **OLD, **USER_OLD}, "new": {**BASE, **NEW},
                  }[info["current"]]
        assert seen == wanted, (info, seen)


class Cutover(Switching):
    argv = ("cutover-stackpoint", "sp", "new")

    def done(self, root: Path) -> bool:
        return point_info(root, "sp")["current"] == "new"


class Fallback(Switching):
    argv = ("fallback-stackpoint", "sp")

    def setup(self, root: Path) -> None:
        super().setup(root)
        sto(root, "cutover-stackpoint", "sp", "new")
        write(root / "stackpoints" / "sp", USER_NEW)

    def done(self, root: Path) -> bool:
        return point_info(root, "sp")["current"] == "old"

    def verify(self, root: Path, done: bool) -> None:
        info = point_info(root, "sp")
        seen = shows(root, "sp")
        wanted = {"old": {**BASE, **OLD, **USER_OLD},
                  "new": {**BASE, **NEW, **USER_NEW}}[info["current"]]
        assert seen == wanted, (info, seen)


class DeleteStackpoint(Scenario):
    argv = ("delete-stackpoint", "sp")

    def setup(self, root: Path) -> None:
        super().setup(root)
        sto(root, "new-stackpoint", "sp", "base")
        write(Path(sto(root, "mount-stackpoint", "sp")[1].strip()),
              {f"u{n}/file": "y" * 1000 for n in range(100)})
        sto(root, "umount-stackpoint", "sp")

    def done(self, root: Path) -> bool:
        return point_info(root, "sp") is None

    def verify(self, root: Path, done: bool) -> None:
        if not done:
            assert len(shows(root, "sp")) == 101
            sto(root, "umount-stackpoint", "sp")


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rootfs tarball big enough that an import takes a while (16 MB, 800 files)."""
    return random_tar(tmp_path_factory.mktemp("archive") / "big.tar", 800, 20_000, dirs=40)


class Import(Scenario):
    def __init__(self, archive: Path) -> None:
        self.argv = ("import-image", "big", str(archive), "base")

    def done(self, root: Path) -> bool:
        return "big" in images_listed(root)

    def verify(self, root: Path, done: bool) -> None:
        if done:
            sto(root, "new-stackpoint", "look", "big")
            _, out, _ = sto(root, "mount-stackpoint", "look")
            count = sum(len(files) for _, _, files in os.walk(out.strip()))
            assert count == 801
            sto(root, "umount-stackpoint", "look")
            sto(root, "delete-stackpoint", "look")


SCENARIOS: Dict[str, Callable[..., Scenario]] = {
    "new-image": NewImage, "close-image": CloseImage, "delete-image": DeleteImage,
    "import-image": Import, "new-stackpoint": NewStackpoint, "cutover-stackpoint": Cutover,
    "fallback-stackpoint": Fallback, "delete-stackpoint": DeleteStackpoint,
}


def startup_time(workdir: Path) -> float:
    """How long the interpreter and stacko take before any command's real work."""
    root = workdir / "probe"
    sto(root, "new-image", "probe")
    return min(timed_run(root, "list-images") for _ in range(3))


def check_after(root: Path) -> List[str]:
    """check's findings (leftovers only), then --repair fixes all, then clean."""
    status, found, err = sto(root, "check", rc=None)
    assert "is missing" not in found, found
    assert "Traceback" not in err
    sto(root, "check", "--repair")
    assert sto(root, "check")[1] == ""
    return found.splitlines()


@pytest.mark.parametrize("command", sorted(SCENARIOS))
def test_killed_command_leaves_a_workable_state(command: str, workdir: Path,
                                                big_archive: Path) -> None:
    scenario = SCENARIOS[command](big_archive) if command == "import-image" \
        else SCENARIOS[command]()
    rng = random.Random(f"crash-{command}")

    runs = []
    for n in range(3):        # the quickest of three: the machine may be busy
        measure = workdir / f"measure{n}"
        scenario.setup(measure)
        runs.append(timed_run(measure, *scenario.argv))
        unmount_all(measure)
    duration = min(runs)
    start = startup_time(workdir) * 0.7

    stats = {"kills": 0, "finished": 0, "before-done": 0, "after-done": 0, "leftovers": 0}
    n = 0
    while stats["kills"] < KILLS and n < 5 * KILLS:
        n += 1
        root = workdir / f"r{n}"
        scenario.setup(root)
        delay = rng.uniform(start, max(duration, start + 0.01))
        proc = spawn(root, *scenario.argv)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert b"Traceback" not in err, err.decode()
        stats["kills" if proc.returncode == -signal.SIGKILL else "finished"] += 1
        # Listings work, from the state on disk alone.
        sto(root, "list-images")
        sto(root, "list-images", "--json")
        sto(root, "list-stackpoints", "--json")
        done = scenario.done(root)
        stats["after-done" if done else "before-done"] += 1
        scenario.verify(root, done)
        if not done:          # repeating the command finishes the job, no repair needed
            status, _, err2 = sto(root, *scenario.argv, rc=None)
            assert status == 0, f"kill {n} after {delay:.3f}s: repeat failed: {err2}"
            assert scenario.done(root)
        found = check_after(root)
        stats["leftovers"] += len(found)
        unmount_all(root)
        subprocess.run(["rm", "-rf", str(root)], check=True)
    print(f"\n{command}: {stats} (run {duration:.3f}s, start-up {start:.3f}s)")
    assert stats["kills"] >= KILLS, stats


# --- kills at every step: strace delivers SIGKILL on entry to the Kth call -------------
STEP_CALLS = ("mkdir", "rename", "fsync", "unlinkat", "rmdir", "fsmount", "move_mount",
              "umount2", "mount")


def strace_argv(root: Path, argv: Tuple[str, ...], *options: str) -> List[str]:
    return ["strace", "-f", "-qq", *options, sys.executable, "-m", "stacko",
            "--root", str(root), *argv]


def call_counts(root: Path, argv: Tuple[str, ...], calls: Tuple[str, ...],
                env: Optional[Dict[str, str]] = None) -> Dict[str, int]:
    """How many times the busiest process of the command makes each call
    (strace counts per process and per call: when=K hits each one's Kth)."""
    out = root.parent / f"{root.name}.trace"
    proc = subprocess.run(strace_argv(root, argv, "-o", str(out), "-e", "trace=" + ",".join(calls)),
                          capture_output=True, env=dict(os.environ, PYTHONPATH=REPO, **(env or {})))
    assert proc.returncode == 0, proc.stderr.decode()
    counts: Dict[Tuple[str, str], int] = {}
    for line in out.read_text().splitlines():
        pid, _, rest = line.partition(" ")
        name = rest.split("(", 1)[0].strip()
        if name in calls:
            counts[(pid, name)] = counts.get((pid, name), 0) + 1
    out.unlink()
    found: Dict[str, int] = {}
    for (_, name), n in counts.items():
        found[name] = max(found.get(name, 0), n)
    return found


def run_injected(root: Path, argv: Tuple[str, ...], inject: str,
                 env: Optional[Dict[str, str]] = None) -> Tuple[int, str]:
    proc = subprocess.run(strace_argv(root, argv, "-o", "/dev/null", "-e", "inject=" + inject),
                          capture_output=True,
                          env=dict(os.environ, PYTHONPATH=REPO, **(env or {})), timeout=300)
    return proc.returncode, proc.stderr.decode(errors="replace")


STEPS_PER_CALL = 8


def spread(total: int, most: int) -> List[int]:
    """1..total, or `most` of them evenly spread, first and last included."""
    if total <= most:
        return list(range(1, total + 1))
    return sorted({1 + round(i * (total - 1) / (most - 1)) for i in range(most)})


STEP_COMMANDS = ("new-image", "close-image", "delete-image", "new-stackpoint",
                 "cutover-stackpoint", "fallback-stackpoint", "delete-stackpoint")
needs_strace = pytest.mark.skipif(not shutil.which("strace"), reason="strace is needed")


@needs_strace
@pytest.mark.parametrize("command,env", [(c, {}) for c in STEP_COMMANDS] + [
    (c, {"STACKO_MOUNT_API": "legacy"}) for c in ("cutover-stackpoint", "fallback-stackpoint")],
    ids=lambda v: "legacy" if v == {"STACKO_MOUNT_API": "legacy"} else (v if v else "new-api"))
def test_killed_at_every_step(command: str, env: Dict[str, str], workdir: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():      # for the in-process setup and checks too
        monkeypatch.setenv(key, value)
    scenario = SCENARIOS[command]()
    probe = workdir / "probe"
    scenario.setup(probe)
    counts = call_counts(probe, scenario.argv, STEP_CALLS)
    unmount_all(probe)
    kills = 0
    for name, total in sorted(counts.items()):
        for k in spread(total, STEPS_PER_CALL):
            root = workdir / f"{name}-{k}"
            scenario.setup(root)
            status, err = run_injected(root, scenario.argv, f"{name}:signal=SIGKILL:when={k}")
            assert "Traceback" not in err, err
            kills += 1
            sto(root, "list-images")
            sto(root, "list-stackpoints", "--json")
            done = scenario.done(root)
            scenario.verify(root, done)
            if not done:
                status, _, err2 = sto(root, *scenario.argv, rc=None)
                assert status == 0, f"killed at {name} #{k}: repeat failed: {err2}"
                assert scenario.done(root)
            check_after(root)
            unmount_all(root)
            subprocess.run(["rm", "-rf", str(root)], check=True)
    print(f"\n{command}: killed at {kills} steps {counts}")
    assert kills >= 3

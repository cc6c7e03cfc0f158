"""Deep stacks, awkward root paths, and many stacko processes at once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import populate, run_stacko, snapshot
from stacko import images
from stacko.state import Store

pytestmark = pytest.mark.mounts


def long_name(i: int) -> str:
    return f"layer-{i:03d}-" + "x" * 118            # 128 characters


@pytest.mark.parametrize("api", ["legacy", "auto"])
def test_a_500_deep_stack_of_long_names_mounts_and_a_501st_is_refused(workdir, api) -> None:
    # A root with a space, ':' and ',' in it, whose path is long too.
    root = workdir / ("deep root:with,commas " + "d" * 100)
    store = Store(str(root))
    parent = None
    for i in range(500):              # in-process: 500 subprocesses would take minutes
        images.new_image(store, long_name(i), parent)
        parent = long_name(i)
        if i in (0, 250, 499):
            layer = store.load_images()[parent].layer
            (Path(store.layer_path(layer)) / f"file{i}").write_text(str(i))
    env = {"STACKO_MOUNT_API": api}
    before = snapshot(root)
    r = run_stacko(root, "new-image", "one-too-many", parent, rc=1, env=env)
    assert "500" in r.stderr
    assert snapshot(root) == before
    run_stacko(root, "new-stackpoint", "deep", parent, env=env)
    d = Path(run_stacko(root, "mount-stackpoint", "deep", env=env).out)
    assert sorted(os.listdir(d)) == ["file0", "file250", "file499"]
    (d / "top").write_text("cow")
    run_stacko(root, "umount-stackpoint", "deep", env=env)
    ro = Path(run_stacko(root, "edit-image", parent, "--read-only", env=env).out)
    assert (ro / "file0").read_text() == "0"
    run_stacko(root, "close-image", parent, env=env)


def test_root_path_with_spaces_colons_and_commas(workdir) -> None:
    root = workdir / "a b:c,d\\e"
    run_stacko(root, "new-image", "base")
    d = Path(run_stacko(root, "edit-image", "base").out)
    (d / "f").write_text("1")
    run_stacko(root, "close-image", "base")
    run_stacko(root, "new-stackpoint", "p", "base")
    assert (Path(run_stacko(root, "mount-stackpoint", "p").out) / "f").read_text() == "1"
    run_stacko(root, "is-stackpoint-mounted", "p")
    run_stacko(root, "umount-stackpoint", "p")
    run_stacko(root, "is-stackpoint-mounted", "p", rc=1)


def test_eight_concurrent_invocations(stacko, root) -> None:
    populate(stacko, "base", {"f": "base"})

    def worker(i: int):
        results = [run_stacko(root, "new-image", f"img{i}", "base"),
                   run_stacko(root, "new-stackpoint", f"p{i}", f"img{i}"),
                   run_stacko(root, "mount-stackpoint", f"p{i}"),
                   run_stacko(root, "list-images"),
                   run_stacko(root, "cutover-stackpoint", f"p{i}", "base"),
                   run_stacko(root, "fallback-stackpoint", f"p{i}")]
        return results

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    names = stacko("list-images").out.splitlines()
    assert names == ["base"] + [f"img{i}" for i in range(8)]
    points = json.loads(stacko("list-stackpoints", "--json").out)
    assert [p["name"] for p in points] == [f"p{i}" for i in range(8)]
    assert all(p["current"] == f"img{p['name'][1:]}" and p["mounted"] for p in points)
    assert all(p["history"] == [] for p in points)
    for i in range(8):
        stacko("umount-stackpoint", f"p{i}")


def lock_holder(root: Path) -> subprocess.Popen:
    """A process that holds <root>/lock exclusively until a line on its stdin."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"), str(root / "lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if holder.stdout.readline().strip() != b"locked":
        holder.kill()
        holder.wait()
        raise AssertionError("the holder could not take the lock")
    return holder


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def waiting(root: Path, *args: str) -> "tuple[subprocess.Popen, str]":
    """A stacko command started while the lock is held, once it has said that it
    waits: its first line on stderr, read as it comes, however slow the start
    (a generous timeout only so that a command that never says so ends)."""
    # SIGINT as a terminal gives it: a suite started in the background by a
    # non-interactive shell has SIGINT ignored, which children inherit (and
    # Python then keeps ignoring it, as it should).
    waiter = subprocess.Popen([sys.executable, "-m", "stacko", "--root", str(root), *args],
                              preexec_fn=default_sigint,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ, STACKO_LOCK_TIMEOUT="240",
                                       PYTHONPATH=str(Path(__file__).parent.parent)))
    return waiter, waiter.stderr.readline().decode()


def test_a_waiting_command_says_so_and_gives_up_in_time(stacko, root) -> None:
    stacko("new-image", "base")
    holder = lock_holder(root)
    try:
        before = snapshot(root)
        start = time.monotonic()
        r = stacko("new-image", "gives-up", rc=1, env={"STACKO_LOCK_TIMEOUT": "1.5"})
        assert time.monotonic() - start >= 1.5
        assert "waiting for another stacko command" in r.stderr and "gave up" in r.stderr
        assert snapshot(root) == before
        waiter, said = waiting(root, "new-image", "waited")
        assert "waiting for another stacko command" in said
        assert waiter.poll() is None
        holder.stdin.write(b"go\n")
        holder.stdin.flush()
        out, err = waiter.communicate(timeout=240)
        assert waiter.returncode == 0 and b"Traceback" not in err, err
    finally:
        holder.kill()
        holder.wait()
    assert stacko("list-images").out.split() == ["base", "waited"]


@pytest.mark.parametrize("signum, status, says", [(signal.SIGTERM, 143, "terminated"),
                                                  (signal.SIGINT, 130, "interrupted")])
def test_a_signal_ends_a_waiting_command_cleanly(stacko, root, signum, status, says) -> None:
    stacko("new-image", "base")
    holder = lock_holder(root)
    try:
        before = snapshot(root)
        waiter, said = waiting(root, "new-image", "never")
        assert "waiting for another stacko command" in said
        waiter.send_signal(signum)
        err = said + waiter.communicate(timeout=60)[1].decode()
        assert waiter.returncode == status, err
        assert says in err and "Traceback" not in err
        assert snapshot(root) == before
    finally:
        holder.kill()
        holder.wait()

"""A power cut loses nothing `pull-image` said was done (issue 10; the other
commands are in tests/test_powercut.py).

An image of three layers is pushed to the plain-HTTP registry on 127.0.0.1
(tests/registryd.py), pulled into a state root on a loop-mounted ext4
(commit=1), and the disk is then taken as a power cut would leave it
(tests/powercut.py): every image its metadata lists has all its content and
`stacko check` is clean.  A pull killed part way leaves only whole images.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import random_tar, run_stacko
from ocigen import d, f, wh, write_layout
from powercut import LoopRoot, assert_whole, images_json, listed_images
from registryd import Registry, available, skopeo_push
from registryfix import registry  # noqa: F401  (the fixture)

pytestmark = [
    pytest.mark.mounts,
    pytest.mark.skipif(not (available() and shutil.which("skopeo")),
                       reason="docker-registry and skopeo are needed (tests/install-deps.sh)")]

FILES, SIZE = 2500, 16384          # per layer: 40 MiB of incompressible data, so that
                                   # the pull takes seconds and the kill lands part way
PULLED = ["app", "app.layer-1", "app.layer-2"]


@pytest.fixture
def disk(workdir: Path) -> Iterator[LoopRoot]:
    with LoopRoot(workdir) as loop:
        yield loop


def layer(n: int) -> list:
    rng = random.Random(n)
    return [d(f"l{n}")] + [f(f"l{n}/f{k}", rng.randbytes(SIZE)) for k in range(FILES)]


@pytest.fixture(scope="module")
def ref(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """app:v1 in the registry: three layers of many files, the middle one
    deleting a file of the bottom one."""
    layout = tmp_path_factory.mktemp("pullcut") / "layout"
    write_layout(layout, [layer(0), layer(1) + [wh("l0/f0")], layer(2)], ref="v1",
                 compression=["none", "none", "none"])
    skopeo_push(registry, f"oci:{layout}:v1", "app:v1")
    return f"{registry.host}/app:v1"


def test_pull_survives_a_power_cut(disk: LoopRoot, ref: str) -> None:
    run_stacko(disk.root, "pull-image", "app", ref, "--tls-verify=false")
    copy = disk.power_cut()
    assert assert_whole(copy) == PULLED
    images = images_json(copy)
    assert images["app"]["parent"] == "app.layer-2"
    # What the user sees: the files of every layer, whole, through a stackpoint.
    run_stacko(copy, "new-stackpoint", "p", "app")
    mounted = Path(run_stacko(copy, "mount-stackpoint", "p").out)
    for n in range(3):
        assert (mounted / f"l{n}" / "f7").read_bytes() == layer(n)[8][1]   # [0] is l{n}/
    assert not (mounted / "l0" / "f0").exists()
    run_stacko(copy, "umount-stackpoint", "p")


@pytest.mark.parametrize("delay", [0.4, 0.8, 1.2])
def test_a_killed_pull_leaves_only_whole_images(disk: LoopRoot, workdir: Path, ref: str,
                                                delay: float) -> None:
    """Killed part way, then the power cut: whatever the copy lists is whole;
    and pulling again on the original works."""
    first = random_tar(workdir / "first.tar", files=500, size=4096, dirs=5, seed=5)
    run_stacko(disk.root, "import-image", "first", str(first))
    argv = [sys.executable, "-m", "stacko", "--root", str(disk.root), "pull-image",
            "app", ref, "--tls-verify=false"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(delay)
    # The pull takes ~3 s here; on a machine fast enough to finish it before a
    # later delay, that case is the power cut after a whole pull (the first
    # delay, 0.4 s, is before any machine can finish it).
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    else:
        assert delay > 0.5, "the pull ended before it could be killed"
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    proc.wait()
    copy = disk.power_cut()
    names = assert_whole(copy, check=False)
    assert "first" in names and set(names) <= {"first", *PULLED}
    # What the kill left (staging, an unrecorded layer) check --repair clears.
    run_stacko(copy, "check", "--repair", rc=None)
    run_stacko(copy, "check")
    # On the original disk the pull goes through again, and all of it is whole;
    # unless the kill landed after the pull had recorded its image (the pull is
    # close to 1.2 s on a quick machine), when pulling again is refused as for
    # any existing name.
    if "app" in listed_images(disk.root):
        again = run_stacko(disk.root, "pull-image", "app", ref, "--tls-verify=false", rc=1)
        assert "image 'app' exists already" in again.stderr
    else:
        run_stacko(disk.root, "pull-image", "app", ref, "--tls-verify=false")
    assert sorted(assert_whole(disk.root)) == sorted(["first", *PULLED])

"""A power cut loses nothing stacko said was done, for the state-changing
commands that tests/test_powercut.py does not cover: new-image, edit-image,
delete-image, new-stackpoint, delete-stackpoint, mount-stackpoint of a
tentative stackpoint (a try used, or the fallback when none is left),
fallback-stackpoint, new-, set- and delete-stackpoint-instance,
prune-stackpoint, confirm-stackpoint and check --repair.

Every case gets its own state root, all of them on ONE loop-mounted ext4
(tests/powercut.py), so that one power cut serves them all:

1. every root is set up (its data made durable by close-image's syncfs);
2. in each case's "done" root the command runs to its end (exit 0); in its
   other roots it is SIGKILLed by strace on entry to the Kth rename, fsync,
   unlinkat, mkdir, … (a few K spread over the command's own calls, counted
   on a throwaway root first);
3. one power cut (wait for the journal, copy, fsck, mount the copy);
4. in the copy, each "done" root shows the command's result whole, and each
   killed root shows the state before or the state after, never a record
   whose data is gone; `check --repair` clears what the kill left without
   touching any record, and the stackpoints mount and show their files.

Nothing in step 2 calls syncfs, so no later command writes back the data of
an earlier one: each root holds on the copy only what its own command made
durable.

Each command also runs alone on an ext4 mounted with commit=60 and is copied
0.2 s after its exit: the journal holds only what the command forced, which is
what a power cut right after it leaves.  And the removals keep their data
when the record that forgets it cannot be synced (strace fails the fsyncs).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import _mounts_under
from powercut import LoopRoot
from test_crash import call_counts, run_injected, spread, sto, tree, write

pytestmark = [pytest.mark.mounts,
              pytest.mark.skipif(not shutil.which("strace"), reason="strace is needed")]

KILL_CALLS = ("rename", "fsync", "unlinkat", "rmdir", "mkdir", "umount2", "move_mount",
              "mount")
KILLS_PER_CALL = 2
KILLS_PER_CASE = 6

BASE = {f"d{n % 4}/f{n}": f"base file {n}\n" * 50 for n in range(40)}
V2 = {"app/version": "2\n"}
V3 = {"app/version": "3\n"}
USER = {f"u{n % 5}/data{n}": f"user data {n}\n" * 80 for n in range(60)}


# --- building states ------------------------------------------------------------------
def image(root: Path, name: str, files: Dict[str, str], parent: Optional[str] = None) -> None:
    sto(root, "new-image", name, *([parent] if parent else []))
    write(Path(sto(root, "edit-image", name)[1].strip()), files)
    sto(root, "close-image", name)


def images(root: Path) -> None:
    image(root, "base", BASE)
    image(root, "v2", V2, "base")
    image(root, "v3", V3, "base")


def point(root: Path, on: str = "base", user: bool = False, mounted: bool = False) -> None:
    """Stackpoint p on image on; user: files written in its instance."""
    sto(root, "new-stackpoint", "p", on)
    directory = Path(sto(root, "mount-stackpoint", "p")[1].strip())
    if user:
        write(directory, USER)
    if not mounted:
        sto(root, "umount-stackpoint", "p")


def setup_new_image(root: Path) -> None:
    image(root, "base", BASE)


def setup_delete_image(root: Path) -> None:
    image(root, "base", BASE)
    image(root, "doomed", USER, "base")


def setup_delete_stackpoint(root: Path) -> None:
    image(root, "base", BASE)
    point(root, user=True)


def setup_tentative(root: Path, mounts: int = 0) -> None:
    """p on v2 by a cutover --tries 2, unmounted, after mounts boots."""
    images(root)
    point(root, mounted=True)
    sto(root, "cutover-stackpoint", "p", "v2", "--tries", "2")
    sto(root, "umount-stackpoint", "p")
    for _ in range(mounts):
        sto(root, "mount-stackpoint", "p")
        sto(root, "umount-stackpoint", "p")


def setup_fallback(root: Path) -> None:
    images(root)
    point(root, user=True, mounted=True)
    sto(root, "cutover-stackpoint", "p", "v2")


def setup_new_instance(root: Path) -> None:
    images(root)
    point(root)


def setup_set_instance(root: Path) -> None:
    images(root)
    point(root, mounted=True)
    sto(root, "new-stackpoint-instance", "p", "v2")


def setup_delete_instance(root: Path) -> None:
    images(root)
    point(root, user=True, mounted=True)
    sto(root, "cutover-stackpoint", "p", "v2")


def setup_prune(root: Path) -> None:
    setup_delete_instance(root)
    sto(root, "cutover-stackpoint", "p", "v3")


def setup_confirm(root: Path) -> None:
    images(root)
    point(root, mounted=True)
    sto(root, "cutover-stackpoint", "p", "v2", "--tries", "1")


def setup_repair(root: Path) -> None:
    """What interrupted commands leave: an empty unnamed layer with its workdir,
    an unnamed layer that holds files, a workdir without a layer, a stray manifest."""
    image(root, "base", BASE)
    point(root)
    for layer in ("zzzz1", "zzzz2"):
        (root / "l" / layer).mkdir()
        (root / "w" / layer).mkdir()
    write(root / "l" / "zzzz2", USER)
    (root / "w" / "zzzz3").mkdir()
    (root / "m" / "zzzz4.json").write_text("{}")


# --- what a root holds ------------------------------------------------------------------
def records(root: Path, name: str) -> dict:
    path = root / f"{name}.json"
    return json.loads(path.read_text())[name] if path.exists() else {}


def summary(root: Path) -> Tuple:
    """The state, as far as old-or-new goes: images (sealed or not), and each
    stackpoint's current image, instances, history and tries left."""
    imgs = tuple(sorted((n, i.get("manifest") is not None) for n, i in
                        records(root, "images").items()))
    points = []
    for name, p in sorted(records(root, "stackpoints").items()):
        t = p.get("tentative")
        tries = t["tries_left"] if t and t["image"] == p["current"] else None
        points.append((name, p["current"], tuple(sorted(i["image"] for i in p["instances"])),
                       tuple(p.get("history", ())), tries))
    return imgs, tuple(points)


def assert_consistent(root: Path) -> None:
    """Nothing listed whose data is gone: every listed layer is there, every
    sealed image verifies clean; check reports leftovers at worst, and
    --repair clears them without changing any record; then the stackpoints
    mount and show their images' files."""
    imgs, points = records(root, "images"), records(root, "stackpoints")
    assert sto(root, "list-images")[0] == 0
    for name, rec in imgs.items():
        assert (root / "l" / rec["layer"]).is_dir(), f"image {name!r}: its layer is gone"
    for name, rec in points.items():
        for inst in rec["instances"]:
            assert (root / "l" / inst["layer"]).is_dir(), \
                f"stackpoint {name!r}: the layer of its instance of {inst['image']!r} is gone"
    sealed = sorted(n for n, i in imgs.items() if i.get("manifest") is not None)
    if sealed:
        status, out, err = sto(root, "verify-image", *sealed, rc=None)
        assert status == 0 and not out, f"after the power cut, images lost content:\n{out}{err}"
    before = [(root / f).read_bytes() if (root / f).exists() else None
              for f in ("images.json", "stackpoints.json")]
    status, found, _ = sto(root, "check", rc=None)
    assert "is missing" not in found and "not repaired" not in found, found
    if status:
        status, out, err = sto(root, "check", "--repair", rc=None)
        assert status == 0, f"{out}{err}"
        assert sto(root, "check")[1] == ""
    after = [(root / f).read_bytes() if (root / f).exists() else None
             for f in ("images.json", "stackpoints.json")]
    assert after == before, "check --repair changed a record"
    # A kill before the rename of a metadata file leaves its temporary file:
    # check reports it and --repair removes it, or it would stay forever.
    temps = [p.name for p in root.iterdir() if p.name.endswith(".tmp")]
    assert not temps, f"check left the temporary files {temps}"
    for name, rec in sorted(points.items()):
        shown = tree(Path(sto(root, "mount-stackpoint", name)[1].strip()))
        current = summary(root)[1]     # the mount may have used a try, or fallen back
        on = dict((n, c) for n, c, *_ in current)[name]
        wanted = {**BASE, **{"v2": V2, "v3": V3}.get(on, {})}
        assert {k: v for k, v in shown.items() if not k.startswith("u")} == wanted, (name, on)
        sto(root, "umount-stackpoint", name)


# --- the cases: setup, command, what the finished command leaves -----------------------
def after_new_image(root: Path) -> None:
    assert records(root, "images")["child"].get("manifest") is not None
    assert records(root, "images")["child"]["parent"] == "base"


def after_first_image(root: Path) -> None:
    """The first command made the root itself: the copy has it, marked."""
    assert records(root, "images")["child"].get("manifest") is not None
    assert (root / ".stacko-root").is_file()


def after_edit_image(root: Path) -> None:
    # Unsealed (open for editing, its content no longer promised) until close-image.
    assert records(root, "images")["base"].get("manifest") is None
    sto(root, "close-image", "base")
    assert sto(root, "verify-image", "base")[1] == ""


def after_delete_image(root: Path) -> None:
    assert "doomed" not in records(root, "images")


def after_new_stackpoint(root: Path) -> None:
    assert records(root, "stackpoints")["p"]["current"] == "base"


def after_delete_stackpoint(root: Path) -> None:
    assert records(root, "stackpoints") == {}


def tries_left(root: Path) -> Optional[int]:
    t = records(root, "stackpoints")["p"].get("tentative")
    return None if t is None else t["tries_left"]


def after_boot_try(root: Path) -> None:
    assert records(root, "stackpoints")["p"]["current"] == "v2"
    assert tries_left(root) == 1


def after_boot_fallback(root: Path) -> None:
    p = records(root, "stackpoints")["p"]
    assert p["current"] == "base" and p.get("tentative") is None


def after_fallback(root: Path) -> None:
    assert records(root, "stackpoints")["p"]["current"] == "base"


def after_new_instance(root: Path) -> None:
    p = records(root, "stackpoints")["p"]
    assert p["current"] == "base"
    assert sorted(i["image"] for i in p["instances"]) == ["base", "v2"]
    sto(root, "set-stackpoint-instance", "p", "v2")


def after_set_instance(root: Path) -> None:
    assert records(root, "stackpoints")["p"]["current"] == "v2"


def after_delete_instance(root: Path) -> None:
    p = records(root, "stackpoints")["p"]
    assert [i["image"] for i in p["instances"]] == ["v2"]


def after_prune(root: Path) -> None:
    p = records(root, "stackpoints")["p"]
    assert [i["image"] for i in p["instances"]] == ["v3"] and not p.get("history")


def after_confirm(root: Path) -> None:
    assert tries_left(root) is None
    # The next boots stay on v2: nothing falls back any more.
    for _ in range(3):
        sto(root, "mount-stackpoint", "p")
        sto(root, "umount-stackpoint", "p")
    assert records(root, "stackpoints")["p"]["current"] == "v2"


def after_repair(root: Path) -> None:
    assert sto(root, "check")[1] == ""
    assert not (root / "l" / "zzzz1").exists() and not (root / "w" / "zzzz3").exists()
    assert tree(root / "orphans" / "zzzz2") == USER     # kept, out of the way


Case = Tuple[Callable[[Path], None], Tuple[str, ...], Callable[[Path], None]]
CASES: Dict[str, Case] = {
    "new-image": (setup_new_image, ("new-image", "child", "base"), after_new_image),
    "new-image-new-root": (lambda root: None, ("new-image", "child"), after_first_image),
    "edit-image": (setup_new_image, ("edit-image", "base"), after_edit_image),
    "delete-image": (setup_delete_image, ("delete-image", "doomed"), after_delete_image),
    "new-stackpoint": (setup_new_image, ("new-stackpoint", "p", "base"), after_new_stackpoint),
    "delete-stackpoint": (setup_delete_stackpoint, ("delete-stackpoint", "p"),
                          after_delete_stackpoint),
    "mount-tentative": (setup_tentative, ("mount-stackpoint", "p"), after_boot_try),
    "mount-tentative-fallback": (lambda root: setup_tentative(root, mounts=2),
                                 ("mount-stackpoint", "p"), after_boot_fallback),
    "fallback-stackpoint": (setup_fallback, ("fallback-stackpoint", "p"), after_fallback),
    "new-stackpoint-instance": (setup_new_instance, ("new-stackpoint-instance", "p", "v2"),
                                after_new_instance),
    "set-stackpoint-instance": (setup_set_instance, ("set-stackpoint-instance", "p", "v2"),
                                after_set_instance),
    "delete-stackpoint-instance": (setup_delete_instance,
                                   ("delete-stackpoint-instance", "p", "base"),
                                   after_delete_instance),
    "prune-stackpoint": (setup_prune, ("prune-stackpoint", "p", "--keep", "0"), after_prune),
    "confirm-stackpoint": (setup_confirm, ("confirm-stackpoint", "p"), after_confirm),
    "check-repair": (setup_repair, ("check", "--repair"), after_repair),
}


def kill_points(scratch: Path, name: str) -> List[str]:
    """strace inject specs that kill the command at a few of its steps, spread
    over its calls (counted on a throwaway root, off the loop disk)."""
    setup, argv, _ = CASES[name]
    probe = scratch / f"probe-{name}"
    setup(probe)
    counts = call_counts(probe, argv, KILL_CALLS)
    unmount(probe)
    points = [f"{call}:signal=SIGKILL:when={k}" for call, total in sorted(counts.items())
              for k in spread(total, KILLS_PER_CALL)]
    if len(points) > KILLS_PER_CASE:
        points = [points[round(i * (len(points) - 1) / (KILLS_PER_CASE - 1))]
                  for i in range(KILLS_PER_CASE)]
    return points


def unmount(path: Path) -> None:
    for mp in reversed(_mounts_under(str(path))):
        subprocess.run(["umount", "-l", mp], capture_output=True)


class Cut:
    """The copy after the one power cut, and what each root held before it."""

    def __init__(self, copy: Path, before: Dict[str, Tuple], kills: Dict[str, List[str]]):
        self.copy, self.before, self.kills = copy, before, kills
        # Before any test changes the copy (the done roots are used further there).
        self.after = {name: summary(copy / f"{name}-done") for name in CASES}


@pytest.fixture(scope="module")
def cut(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cut]:
    work = tmp_path_factory.mktemp("powercut-more")
    scratch = work / "scratch"
    kills = {name: kill_points(scratch, name) for name in CASES}
    with LoopRoot(work, size_mb=384) as disk:
        try:
            roots = {name: [f"{name}-done"] + [f"{name}-kill{n}" for n in range(len(kills[name]))]
                     for name in CASES}
            for name, case_roots in roots.items():            # 1. the states before
                for r in case_roots:
                    CASES[name][0](disk.mnt / r)
            os.sync()
            before = {r: summary(disk.mnt / r) for rs in roots.values() for r in rs}
            for name, (_, argv, _) in CASES.items():          # 2. the commands
                status, out, err = sto(disk.mnt / f"{name}-done", *argv, rc=None)
                assert status == 0, f"{name}: {out}{err}"
                for n, inject in enumerate(kills[name]):
                    _, err = run_injected(disk.mnt / f"{name}-kill{n}", argv, inject)
                    assert "Traceback" not in err, err
            copy = disk.power_cut().parent                    # 3. the power cut
            for case_roots in roots.values():                 # the originals let go
                for r in case_roots:
                    unmount(disk.mnt / r)
            yield Cut(copy, before, kills)
        finally:
            unmount(work)


@pytest.mark.parametrize("name", sorted(CASES))
def test_done_survives_a_power_cut(cut: Cut, name: str) -> None:
    """Exit 0, then the power cut: the copy shows the command's result, whole."""
    root = cut.copy / f"{name}-done"
    if name != "check-repair":         # it changes no record
        assert cut.after[name] != cut.before[f"{name}-done"], "the copy shows the state before"
    CASES[name][2](root)
    assert_consistent(root)


@pytest.mark.parametrize("name", sorted(CASES))
def test_killed_then_power_cut_is_old_or_new(cut: Cut, name: str) -> None:
    """Killed at a step, then the power cut: the state before or after, whole."""
    assert cut.kills[name], f"{name}: no step to kill at"
    new = cut.after[name]
    for n, inject in enumerate(cut.kills[name]):
        root = cut.copy / f"{name}-kill{n}"
        state = summary(root)
        assert state in (cut.before[f"{name}-kill{n}"], new), \
            f"killed at {inject}: neither the state before nor after: {state}"
        if not root.exists():
            continue           # killed before it made the root: nothing to look at
        try:
            assert_consistent(root)
        except AssertionError as e:
            raise AssertionError(f"killed at {inject}: {e}") from None


# --- a removal waits for its record ---------------------------------------------------
REMOVALS = {
    "delete-image": (setup_delete_image, ("delete-image", "doomed"),
                     lambda root: records(root, "images")["doomed"]["layer"]),
    "delete-stackpoint": (setup_delete_stackpoint, ("delete-stackpoint", "p"),
                          lambda root: records(root, "stackpoints")["p"]["instances"][0]["layer"]),
    "delete-stackpoint-instance": (setup_delete_instance,
                                   ("delete-stackpoint-instance", "p", "base"),
                                   lambda root: next(
                                       i["layer"] for i in records(root, "stackpoints")["p"]
                                       ["instances"] if i["image"] == "base")),
    "prune-stackpoint": (setup_prune, ("prune-stackpoint", "p", "--keep", "0"),
                         lambda root: next(
                             i["layer"] for i in records(root, "stackpoints")["p"]["instances"]
                             if i["image"] == "base")),
}


@pytest.mark.parametrize("name", sorted(REMOVALS))
def test_no_data_goes_before_its_removal_is_durable(name: str, workdir: Path) -> None:
    """When the directory of the rewritten metadata cannot be synced (EIO from
    the 2nd fsync on: the first is the temporary file's), the record that
    forgot the layer may not survive a power cut, and the layer must stay:
    else the old record would come back naming data that is gone."""
    setup, argv, layer_of = REMOVALS[name]
    root = workdir / "root"
    setup(root)
    layer = layer_of(root)
    status, err = run_injected(root, argv, "fsync:error=EIO:when=2+")
    assert "cannot sync" in err, err           # the fault hit the directory's fsync
    assert "Traceback" not in err, err
    assert (root / "l" / layer).is_dir() and any((root / "l" / layer).iterdir()), \
        f"{name} removed the data of a removal that is not durable (exit {status}):\n{err}"
    assert status == 1 and "stacko: error:" in err, err
    # Once the disk is well again, check --repair keeps the files out of the way.
    sto(root, "check", "--repair")
    assert sto(root, "check")[1] == ""
    unmount(workdir)


# --- a power cut right after the command -----------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_done_survives_a_power_cut_right_after(name: str, workdir: Path) -> None:
    """The journal committed only what the command forced (commit=60): the power
    cut comes right after its exit, before ext4 would commit on its own."""
    setup, argv, after = CASES[name]
    with LoopRoot(workdir, size_mb=64, commit=60) as disk:
        setup(disk.root)
        os.sync()
        before = summary(disk.root)
        status, out, err = sto(disk.root, *argv, rc=None)
        assert status == 0, f"{out}{err}"
        copy = disk.power_cut(wait=0.2)
        unmount(disk.root)
        if name != "check-repair":
            assert summary(copy) != before, "the copy shows the state before"
        after(copy)
        assert_consistent(copy)


def test_no_image_is_recorded_before_its_manifest_is_durable(workdir: Path) -> None:
    """new-image writes its (empty) manifest with an fsync of it and of m/, not a
    syncfs.  When the fsync of m/ fails, the manifest may not survive a power
    cut: the image must not be recorded naming it (exit 1, nothing changed)."""
    from test_crash import REPO, strace_argv
    root = workdir / "root"
    setup_new_image(root)
    before = sorted(records(root, "images"))
    trace = workdir / "trace"
    probe = workdir / "probe"
    setup_new_image(probe)
    subprocess.run(strace_argv(probe, ("new-image", "child", "base"), "-y", "-o", str(trace),
                               "-e", "trace=fsync"),
                   check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=REPO))
    calls = [line.split(" ", 1)[1].strip() for line in trace.read_text().splitlines()
             if " fsync(" in line]                   # "PID fsync(FD</path>) = 0"
    k = 1 + next(n for n, line in enumerate(calls) if line.split(">", 1)[0].endswith("/m"))
    status, err = run_injected(root, ("new-image", "child", "base"), f"fsync:error=EIO:when={k}")
    assert "Traceback" not in err, err
    assert status == 1 and "stacko: error:" in err, f"exit {status}: {err}"
    assert sorted(records(root, "images")) == before
    assert sto(root, "check")[1] == ""


def test_no_edit_before_the_unsealing_is_durable(workdir: Path) -> None:
    """edit-image records the image unsealed (its manifest no longer holds)
    before it opens the layer for writing.  When that record cannot be synced,
    a power cut could bring back the sealed record over a changed layer, and
    verify-image would call the edits damage: the layer must not be opened."""
    root = workdir / "root"
    setup_new_image(root)
    status, err = run_injected(root, ("edit-image", "base"), "fsync:error=EIO:when=2+")
    assert "cannot sync" in err, err           # the fault hit the directory's fsync
    assert "Traceback" not in err, err
    assert not os.path.ismount(root / "edit" / "base"), \
        f"the image was opened for editing (exit {status}) though its unsealing is not durable"
    assert status == 1 and "stacko: error:" in err, err

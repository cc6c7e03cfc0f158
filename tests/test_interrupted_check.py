"""A checked cutover whose stacko was killed during its check (issue 18 item 2),
and the history a failed or interrupted check leaves (issue 23).

Each test kills a real `cutover-stackpoint p bad --check …` with SIGKILL while
its check runs, then runs one command on the stackpoint.  Whatever the command,
nothing may build on the image that never passed its check: the command first
undoes the interrupted cutover (back to the instance that was current before,
with the history as it was), ends what the dead check left running in its
`stacko-check-*` cgroup, and says so on stderr."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from conftest import Runner, populate, snapshot
from stacko import mountapi

pytestmark = pytest.mark.mounts

REPO = str(Path(__file__).resolve().parent.parent)


@pytest.fixture(params=["", "legacy"], ids=["default", "legacy"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "":
        monkeypatch.delenv(mountapi.ENV, raising=False)
    else:
        monkeypatch.setenv(mountapi.ENV, request.param)
    return request.param


@pytest.fixture
def point(stacko: Runner) -> Path:
    """Stackpoint p, mounted, on g1 with history [g0]; image bad is the update."""
    for name in ("g0", "g1", "bad"):
        populate(stacko, name, {"f": f"{name}\n"})
    stacko("new-stackpoint", "p", "g0")
    directory = Path(stacko("mount-stackpoint", "p").out)
    stacko("cutover-stackpoint", "p", "g1")
    return directory


def info(stacko: Runner, name: str = "p") -> dict:
    return next(p for p in json.loads(stacko("list-stackpoints", "--json").out)
                if p["name"] == name)


def alive(marker: str) -> List[int]:
    """The processes with marker in their command line."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


def kill_marked(marker: str) -> None:
    for _ in range(200):
        pids = alive(marker)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


def check_cgroup(root: Path) -> Optional[str]:
    """The directory of the cgroup of p's pending check, if there is one."""
    from stacko import cgroups
    record = json.loads((root / "stackpoints.json").read_text())["stackpoints"]["p"]
    token = (record.get("checking") or {}).get("token")
    return cgroups.find(cgroups.PREFIX + token) if token else None


def remove_cgroup(path: Optional[str]) -> None:
    """What a failing test leaves: the cgroup, its children first."""
    if path is None:
        return
    for directory, _subdirs, _files in sorted(os.walk(path), reverse=True):
        try:
            os.rmdir(directory)
        except OSError:
            pass


class Killed:
    """`cutover-stackpoint p bad --check …` SIGKILLed while its check runs; the
    check's `sleep` (in the stackpoint, where it holds bad's mount) lives on."""

    def __init__(self, root: Path, tmp: Path, *options: str) -> None:
        self.marker = f"1000.{os.getpid()}{time.monotonic_ns() % 100000}"
        started = tmp / "started"
        argv = [sys.executable, "-m", "stacko", "--root", str(root), "cutover-stackpoint",
                "p", "bad", *options, "--check", f"touch '{started}'; sleep {self.marker}"]
        proc = subprocess.Popen(argv, env=dict(os.environ, PYTHONPATH=REPO),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for _ in range(600):
                if started.exists() and alive(self.marker):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"the check never started: {proc.communicate()}")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.cgroup = check_cgroup(root)
        from stacko import cgroups
        if cgroups.own_cgroup() is not None:
            assert self.cgroup is not None, "the check ran in a cgroup of its own"
        assert alive(self.marker), "what the check started outlives a SIGKILLed stacko"

    def __enter__(self) -> Killed:
        return self

    def __exit__(self, *exc: object) -> None:
        kill_marked(self.marker)
        remove_cgroup(self.cgroup)

    def assert_ended(self) -> None:
        """Nothing of the dead check is left: no process, no cgroup."""
        for _ in range(100):
            if not alive(self.marker):
                break
            time.sleep(0.02)
        assert not alive(self.marker), "the dead check's processes still run"
        if self.cgroup is not None:
            assert not os.path.exists(self.cgroup), f"{self.cgroup} is still there"


def assert_undone(state: dict, current: str = "g1", history: Optional[list] = None) -> None:
    assert state["current"] == current and state["checking"] is None
    assert "bad" in [i["image"] for i in state["instances"]]     # kept, for inspection
    assert "bad" not in state["history"]
    if history is not None:
        assert state["history"] == history
    assert "check-interrupted" in [e["action"] for e in state["events"]]


def test_check_reports_the_interrupted_cutover_and_repair_undoes_it(
        point: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    with Killed(root, tmp_path) as killed:
        report = stacko("check", rc=1)
        assert "stackpoint 'p'" in report.out and "'bad'" in report.out \
            and "interrupted during its check" in report.out
        assert "check --repair" in report.stderr
        assert "fell back to 'g1'" in stacko("check", "--repair").out
        killed.assert_ended()
    assert (point / "f").read_text() == "g1\n"
    assert_undone(info(stacko), history=["g0"])
    stacko("check")


def test_set_after_a_killed_check_does_not_put_the_unproven_image_on_the_history(
        backend: str, point: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    with Killed(root, tmp_path) as killed:
        result = stacko("set-stackpoint-instance", "p", "g0")
        assert "interrupted" in result.stderr and "fell back to 'g1'" in result.stderr
        killed.assert_ended()
    state = info(stacko)
    assert state["current"] == "g0" and state["history"] == ["g1"]
    assert (point / "f").read_text() == "g0\n"
    # The fallback lands on g1, which was proven, never on bad.
    stacko("fallback-stackpoint", "p")
    assert (point / "f").read_text() == "g1\n"
    assert "bad" not in info(stacko)["history"]
    stacko("check")


def test_set_to_the_earlier_instance_after_a_killed_check_ends_the_check(
        backend: str, point: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    with Killed(root, tmp_path) as killed:
        assert "interrupted" in stacko("set-stackpoint-instance", "p", "g1").stderr
        killed.assert_ended()
    assert_undone(info(stacko), history=["g0"])
    assert (point / "f").read_text() == "g1\n"
    # bad's instance is not held by a dead check's process: it can be used again.
    stacko("cutover-stackpoint", "p", "bad")
    assert (point / "f").read_text() == "bad\n"
    stacko("check")


def test_fallback_after_a_killed_check_undoes_it_and_ends_the_check(
        backend: str, point: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    with Killed(root, tmp_path) as killed:
        result = stacko("fallback-stackpoint", "p")
        assert result.out == str(point)
        assert "interrupted" in result.stderr and "fell back to 'g1'" in result.stderr
        killed.assert_ended()
    assert_undone(info(stacko), history=["g0"])
    assert (point / "f").read_text() == "g1\n"
    stacko("cutover-stackpoint", "p", "bad")
    assert (point / "f").read_text() == "bad\n"
    stacko("check")


def test_prune_after_a_killed_check_keeps_the_instance_to_go_back_to(
        point: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    with Killed(root, tmp_path) as killed:
        result = stacko("prune-stackpoint", "p", "--keep", "0")
        assert "interrupted" in result.stderr and "fell back to 'g1'" in result.stderr
        killed.assert_ended()
    state = info(stacko)
    assert state["current"] == "g1" and state["history"] == [] and state["checking"] is None
    assert sorted(i["image"] for i in state["instances"]) == ["bad", "g1"]
    assert (point / "f").read_text() == "g1\n"
    stacko("umount-stackpoint", "p")
    stacko("mount-stackpoint", "p")           # the next boot
    assert (point / "f").read_text() == "g1\n"
    stacko("check")


def test_deleting_the_earlier_instance_after_a_killed_check_is_refused(
        point: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    with Killed(root, tmp_path) as killed:
        result = stacko("delete-stackpoint-instance", "p", "g1", rc=1)
        assert "interrupted" in result.stderr and "fell back to 'g1'" in result.stderr
        assert "cannot delete the current instance ('g1')" in result.stderr
        killed.assert_ended()
    assert_undone(info(stacko), history=["g0"])
    stacko("umount-stackpoint", "p")
    stacko("mount-stackpoint", "p")           # the next boot
    assert (point / "f").read_text() == "g1\n"
    # The unproven one may go.
    stacko("delete-stackpoint-instance", "p", "bad")
    stacko("check")


def test_umount_after_a_killed_check_undoes_it(point: Path, stacko: Runner, root: Path,
                                               tmp_path: Path) -> None:
    with Killed(root, tmp_path) as killed:
        assert "interrupted" in stacko("umount-stackpoint", "p").stderr
        killed.assert_ended()
    state = info(stacko)
    assert_undone(state, history=["g0"])
    assert not state["mounted"]
    stacko("mount-stackpoint", "p")
    assert (point / "f").read_text() == "g1\n"
    stacko("check")


def test_new_instance_after_a_killed_check_undoes_it_first(point: Path, stacko: Runner,
                                                          root: Path, tmp_path: Path) -> None:
    populate(stacko, "g2", {"f": "g2\n"})
    with Killed(root, tmp_path) as killed:
        assert "interrupted" in stacko("new-stackpoint-instance", "p", "g2").stderr
        killed.assert_ended()
    state = info(stacko)
    assert_undone(state, history=["g0"])
    assert "g2" in [i["image"] for i in state["instances"]]
    assert (point / "f").read_text() == "g1\n"


def test_confirm_after_a_killed_checked_tentative_cutover_does_not_keep_it(
        point: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    # Checked and tentative: the check decides now, the boots later.
    with Killed(root, tmp_path, "--tries", "1") as killed:
        assert info(stacko)["tentative"] == {"tries_left": 1, "tries": 1}
        assert "interrupted" in stacko("confirm-stackpoint", "p").stderr
        killed.assert_ended()
    state = info(stacko)
    assert_undone(state)
    assert state["tentative"] is None
    assert "confirm" not in [e["action"] for e in state["events"][-2:]]


def test_commit_after_a_killed_check_is_refused_and_changes_nothing(
        point: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    """What commit would turn into an image is ambiguous (the unproven files shown,
    or the instance the undo returns to): it is refused until the undo is done."""
    with Killed(root, tmp_path):
        before = snapshot(root)
        result = stacko("commit-stackpoint", "p", "mine", rc=1)
        assert "interrupted" in result.stderr and "'bad'" in result.stderr
        assert "fallback-stackpoint p" in result.stderr
        assert snapshot(root) == before
        stacko("fallback-stackpoint", "p")
    stacko("commit-stackpoint", "p", "mine")
    assert (point / "f").read_text() == "g1\n"


# --- issue 23: the history a failed or interrupted check leaves ----------------------
@pytest.fixture
def three(stacko: Runner) -> Path:
    """Stackpoint p, mounted, on c with history [a, b]."""
    for name in ("a", "b", "c"):
        populate(stacko, name, {"f": f"{name}\n"})
    stacko("new-stackpoint", "p", "a")
    directory = Path(stacko("mount-stackpoint", "p").out)
    stacko("cutover-stackpoint", "p", "b")
    stacko("cutover-stackpoint", "p", "c")
    return directory


def as_before(stacko: Runner) -> Dict[str, object]:
    state = info(stacko)
    return {"current": state["current"], "history": state["history"],
            "instances": state["instances"], "events": state["events"]}


@pytest.mark.parametrize("target", ["a", "b"])
def test_a_failed_check_back_to_an_earlier_image_keeps_the_history(
        backend: str, three: Path, stacko: Runner, target: str) -> None:
    before = as_before(stacko)
    stacko("cutover-stackpoint", "p", target, "--check", "exit 1", rc=1)
    after = as_before(stacko)
    assert after["events"][:-2] == before["events"]
    assert [(e["action"], e["from"], e["to"]) for e in after["events"][-2:]] == [
        ("cutover", "c", target), ("check-failed", target, "c")]
    after["events"] = before["events"]
    assert after == before
    assert (three / "f").read_text() == "c\n"
    # The fallbacks walk back as they did before the check.
    stacko("fallback-stackpoint", "p")
    assert (three / "f").read_text() == "b\n"
    stacko("fallback-stackpoint", "p")
    assert (three / "f").read_text() == "a\n"


def test_an_interrupted_check_back_to_an_earlier_image_keeps_the_history(
        three: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    before = as_before(stacko)
    marker = f"1000.{os.getpid()}9"
    started = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stacko", "--root", str(root), "cutover-stackpoint", "p", "a",
         "--check", f"touch '{started}'; sleep {marker}"],
        env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            if started.exists():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert "interrupted" in stacko("mount-stackpoint", "p").stderr
    finally:
        kill_marked(marker)
    after = as_before(stacko)
    assert [e["action"] for e in after["events"][-2:]] == ["cutover", "check-interrupted"]
    after["events"] = before["events"]
    assert after == before
    assert (three / "f").read_text() == "c\n"
    stacko("fallback-stackpoint", "p")
    assert (three / "f").read_text() == "b\n"


def edit_pending(root: Path, **changes: object) -> None:
    """Change p's pending-check record by hand, as an older stacko could have left it."""
    path = root / "stackpoints.json"
    data = json.loads(path.read_text())
    pending = data["stackpoints"]["p"]["checking"]
    for key, value in changes.items():
        if value is None:
            del pending[key]
        else:
            pending[key] = value
    path.write_text(json.dumps(data))


def test_a_record_without_the_history_is_undone_as_before(point: Path, stacko: Runner,
                                                          root: Path, tmp_path: Path) -> None:
    """A pending check recorded by a stacko that did not keep the history."""
    with Killed(root, tmp_path) as killed:
        edit_pending(root, history=None)
        assert "fell back to 'g1'" in stacko("mount-stackpoint", "p").stderr
        killed.assert_ended()
    assert_undone(info(stacko), history=["g0"])


def test_check_says_when_there_is_nothing_to_fall_back_to(point: Path, stacko: Runner,
                                                          root: Path, tmp_path: Path) -> None:
    with Killed(root, tmp_path) as killed:
        edit_pending(root, previous="gone")
        report = stacko("check", rc=1).out
        assert "interrupted during its check" in report and "never passed its check" in report
        result = stacko("check", "--repair")
        assert "nothing to fall back to: its instance of 'gone' is gone" in result.out
        assert "fell back" not in result.out
        assert "stays on 'bad'" in result.stderr
        killed.assert_ended()
    state = info(stacko)
    assert state["current"] == "bad" and state["checking"] is None
    assert state["events"][-1]["action"] == "check-interrupted"


def nesting_check(marker: str, then: str) -> str:
    """A check that makes a child of its own cgroup and runs `sleep marker` there."""
    from stacko import cgroups
    if cgroups.own_cgroup() is None:
        pytest.skip("no writable cgroup v2 mount here")
    mount_point, base = cgroups._cgroup2_mounts()[0]
    return (f'cg="{mount_point.rstrip("/")}$(sed -n "s|^0::{base.rstrip("/")}||p" '
            f'/proc/self/cgroup)"; mkdir "$cg/inner"; sh -c "echo \\$\\$ > '
            f'\'$cg/inner/cgroup.procs\'; exec sleep {marker}" & sleep 0.5; {then}')


def test_a_failed_check_ends_what_it_put_in_a_child_cgroup(point: Path, stacko: Runner,
                                                           root: Path) -> None:
    marker = f"1000.{os.getpid()}6"
    try:
        result = stacko("cutover-stackpoint", "p", "bad", "--check",
                        nesting_check(marker, "exit 1"), rc=1)
        assert "left behind" not in result.stderr
        assert not alive(marker)
    finally:
        kill_marked(marker)
    assert (point / "f").read_text() == "g1\n"


def test_what_a_killed_check_left_in_a_cgroup_of_its_own_is_ended(
        point: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    """A check (root) that makes a child of its cgroup and moves a process into
    it: the child is the check's too, and goes with it."""
    marker = f"1000.{os.getpid()}7"
    started = tmp_path / "started"
    nest = nesting_check(marker, f"touch '{started}'; sleep 300")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stacko", "--root", str(root), "cutover-stackpoint", "p", "bad",
         "--check", nest], env=dict(os.environ, PYTHONPATH=REPO),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    group = None
    try:
        for _ in range(600):
            if started.exists():
                break
            time.sleep(0.05)
        group = check_cgroup(root)
        assert group is not None and os.path.isdir(os.path.join(group, "inner"))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert alive(marker)
        assert "interrupted" in stacko("set-stackpoint-instance", "p", "g1").stderr
        assert not alive(marker)
        assert not os.path.exists(group)
    finally:
        proc.kill()
        kill_marked(marker)
        remove_cgroup(group)
    assert (point / "f").read_text() == "g1\n"

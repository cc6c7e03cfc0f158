"""Updates that undo themselves: tentative cutovers (--tries, confirm-stackpoint),
checked cutovers (--check), and the events every switch leaves; on both mount
backends (the new mount API with its gapless switch, and mount(8))."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Runner, populate, snapshot
from stacko import mountapi

pytestmark = pytest.mark.mounts

RFC3339_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(params=["", "legacy"], ids=["default", "legacy"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "":
        monkeypatch.delenv(mountapi.ENV, raising=False)
    else:
        monkeypatch.setenv(mountapi.ENV, request.param)
    return request.param


@pytest.fixture
def default_only(backend: str) -> None:
    if backend:
        pytest.skip("a test of the default backend only")


@pytest.fixture
def point(backend: str, stacko: Runner) -> Path:
    """Stackpoint p on image old (f=old), mounted; image new (f=new) stacked on it."""
    populate(stacko, "old", {"f": "old\n"})
    populate(stacko, "new", {"f": "new\n"}, parent="old")
    stacko("new-stackpoint", "p", "old")
    return Path(stacko("mount-stackpoint", "p").out)


def info(stacko: Runner, name: str = "p") -> dict:
    return next(p for p in json.loads(stacko("list-stackpoints", "--json").out)
                if p["name"] == name)


def boot(stacko: Runner, root: Path) -> None:
    """What a reboot does to a stackpoint: its mounts are gone (nothing held them)."""
    stacko("umount-stackpoint", "p")


def gone(marker: str) -> bool:
    """No process has marker in its command line."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        return False
            except OSError:
                pass
    return True


# --- tentative cutovers ------------------------------------------------------------
def test_tentative_cutover_falls_back_after_its_tries(point: Path, stacko: Runner,
                                                      root: Path) -> None:
    assert stacko("cutover-stackpoint", "p", "new", "--tries", "2").out == str(point)
    assert (point / "f").read_text() == "new\n"
    (point / "written-on-new").write_text("x")
    assert info(stacko)["tentative"] == {"tries_left": 2, "tries": 2}
    row = stacko("list-stackpoints").out.splitlines()[1]
    assert row.split()[1] == "new" and row.endswith("[tentative: 2 tries left, confirm-stackpoint]")
    for left in (1, 0):                      # two boots on the new instance
        boot(stacko, root)
        result = stacko("mount-stackpoint", "p")
        assert result.stderr == "" and (point / "f").read_text() == "new\n"
        assert info(stacko)["tentative"]["tries_left"] == left
    stacko("mount-stackpoint", "p")          # mounted already: no try used
    assert info(stacko)["tentative"]["tries_left"] == 0
    boot(stacko, root)
    result = stacko("mount-stackpoint", "p")   # the third boot: not confirmed, fall back
    assert result.out == str(point)
    assert "not confirmed" in result.stderr and "fell back to 'old'" in result.stderr
    assert (point / "f").read_text() == "old\n" and not (point / "written-on-new").exists()
    state = info(stacko)
    assert state["current"] == "old" and state["tentative"] is None and state["mounted"]
    assert "new" in [i["image"] for i in state["instances"]]        # kept, with its changes
    last = state["events"][-1]
    assert (last["action"], last["from"], last["to"]) == ("boot-fallback", "new", "old")
    assert "not confirmed after 2 boots" in last["reason"]
    stacko("cutover-stackpoint", "p", "new")                        # the changes are still there
    assert (point / "written-on-new").read_text() == "x"


def test_confirm_makes_a_tentative_cutover_permanent(point: Path, stacko: Runner,
                                                     root: Path) -> None:
    stacko("cutover-stackpoint", "p", "new", "--tries", "1")
    boot(stacko, root)
    stacko("mount-stackpoint", "p")
    assert stacko("confirm-stackpoint", "p").out == ""
    state = info(stacko)
    assert state["tentative"] is None
    assert (state["events"][-1]["action"], state["events"][-1]["reason"]) == \
        ("confirm", "confirmed after 1 of 1 try")
    for _ in range(3):
        boot(stacko, root)
        assert stacko("mount-stackpoint", "p").stderr == ""
        assert (point / "f").read_text() == "new\n"


def test_confirm_of_a_stackpoint_that_is_not_tentative_changes_nothing(point: Path,
                                                                       stacko: Runner,
                                                                       root: Path) -> None:
    before = snapshot(root)
    assert stacko("confirm-stackpoint", "p").out == ""
    assert snapshot(root) == before
    stacko("confirm-stackpoint", "nope", rc=1)
    stacko("confirm-stackpoint", "../x", rc=2)
    assert snapshot(root) == before


def test_tries_zero_lasts_until_the_next_boot(point: Path, stacko: Runner, root: Path) -> None:
    stacko("cutover-stackpoint", "p", "new", "--tries", "0")
    assert (point / "f").read_text() == "new\n"
    boot(stacko, root)
    assert "fell back" in stacko("mount-stackpoint", "p").stderr
    assert (point / "f").read_text() == "old\n"


def test_another_switch_ends_the_tentative_state(point: Path, stacko: Runner, root: Path) -> None:
    stacko("cutover-stackpoint", "p", "new", "--tries", "0")
    stacko("fallback-stackpoint", "p")
    stacko("cutover-stackpoint", "p", "new")     # an admin's plain cutover: permanent
    assert info(stacko)["tentative"] is None
    boot(stacko, root)
    assert stacko("mount-stackpoint", "p").stderr == ""
    assert (point / "f").read_text() == "new\n"


# --- a tentative cutover is decided before anything builds on it ----------------------
DECIDE = ("`stacko confirm-stackpoint p` keeps 'new'",
          "`stacko fallback-stackpoint p` goes back to 'old'")


def refused(stacko: Runner, root: Path, *args: str) -> str:
    """args exits 1 and changes nothing; returns its stderr."""
    before = snapshot(root)
    result = stacko(*args, rc=1)
    assert snapshot(root) == before
    return result.stderr


def test_commit_of_a_tentative_cutover_is_refused_until_it_is_decided(
        point: Path, stacko: Runner, root: Path) -> None:
    """Committing an unproven update and forgetting that it is unproven: the
    commit would end the tentative state, and the next boots would keep it."""
    stacko("cutover-stackpoint", "p", "new", "--tries", "1")
    (point / "written").write_text("x")
    err = refused(stacko, root, "commit-stackpoint", "p", "snap")
    assert "tentative cutover to 'new' (1 try left)" in err and "not confirmed" in err
    assert all(way in err for way in DECIDE), err
    assert info(stacko)["tentative"] == {"tries_left": 1, "tries": 1}
    boot(stacko, root)
    stacko("mount-stackpoint", "p")                  # the one try
    boot(stacko, root)
    assert "fell back to 'old'" in stacko("mount-stackpoint", "p").stderr   # still tentative
    stacko("cutover-stackpoint", "p", "new", "--tries", "1")
    stacko("confirm-stackpoint", "p")                # decided: now it commits
    stacko("commit-stackpoint", "p", "snap")
    assert (point / "written").read_text() == "x" and (point / "f").read_text() == "new\n"
    state = info(stacko)
    assert state["current"] == "snap" and state["tentative"] is None


@pytest.mark.parametrize("args", [
    ("cutover-stackpoint", "p", "third"),
    ("cutover-stackpoint", "p", "third", "--tries", "2"),
    ("cutover-stackpoint", "p", "third", "--check", "true"),
    ("cutover-stackpoint", "p", "old"),
    ("set-stackpoint-instance", "p", "old"),
    ("set-stackpoint-instance", "p", "third"),
    ("delete-stackpoint-instance", "p", "old"),
    ("prune-stackpoint", "p", "--keep", "0"),
], ids=lambda a: " ".join(a[0:1] + a[2:]))
def test_what_would_drop_a_tentative_cutover_is_refused(
        point: Path, stacko: Runner, root: Path, args: tuple) -> None:
    """Moving away from an unproven instance would put it on the history as a
    good one (a later fallback, or a boot's, would land on it); deleting the
    instance it falls back to would leave a boot nothing to fall back to."""
    populate(stacko, "third", {"f": "third\n"}, parent="old")
    stacko("new-stackpoint-instance", "p", "third")
    stacko("cutover-stackpoint", "p", "new", "--tries", "0")
    err = refused(stacko, root, *args)
    assert all(way in err for way in DECIDE), err
    assert info(stacko)["tentative"] == {"tries_left": 0, "tries": 0}
    boot(stacko, root)                               # the boot's fallback is still there
    assert "fell back to 'old'" in stacko("mount-stackpoint", "p").stderr
    assert (point / "f").read_text() == "old\n"
    stacko("cutover-stackpoint", "p", "new", "--tries", "0")
    stacko("confirm-stackpoint", "p")
    stacko(*args)                                    # decided: allowed now


def test_what_leaves_a_tentative_cutover_alone_keeps_it(point: Path, stacko: Runner,
                                                        root: Path) -> None:
    populate(stacko, "third", {"f": "third\n"}, parent="old")
    populate(stacko, "fourth", {"f": "fourth\n"}, parent="old")
    stacko("cutover-stackpoint", "p", "third")
    stacko("fallback-stackpoint", "p")               # history: -, third kept off it
    stacko("set-stackpoint-instance", "p", "third")
    stacko("set-stackpoint-instance", "p", "old")    # history: old, third
    stacko("cutover-stackpoint", "p", "new", "--tries", "1")     # history: third, old
    stacko("new-stackpoint-instance", "p", "fourth")
    stacko("delete-stackpoint-instance", "p", "fourth")
    stacko("prune-stackpoint", "p", "--keep", "1")  # the instance of third, not old
    assert stacko("cutover-stackpoint", "p", "new").out == str(point)     # already on it
    state = info(stacko)
    assert state["tentative"] == {"tries_left": 1, "tries": 1}
    assert state["history"] == ["old"] and state["current"] == "new"
    assert sorted(i["image"] for i in state["instances"]) == ["new", "old"]
    for expected in ("new", "old"):                  # one try, then the fallback
        boot(stacko, root)
        stacko("mount-stackpoint", "p")
        assert (point / "f").read_text() == f"{expected}\n"


def test_bad_tries_and_timeouts_are_usage_errors(point: Path, stacko: Runner, root: Path) -> None:
    before = snapshot(root)
    stacko("cutover-stackpoint", "p", "new", "--tries", "-1", rc=2)
    stacko("cutover-stackpoint", "p", "new", "--tries", "x", rc=2)
    stacko("cutover-stackpoint", "p", "new", "--check", "true", "--check-timeout", "0", rc=2)
    stacko("cutover-stackpoint", "p", "new", "--check", "true", "--check-timeout", "nan", rc=2)
    stacko("cutover-stackpoint", "p", "new", "--check-timeout", "5", rc=2)
    assert snapshot(root) == before


# --- events ------------------------------------------------------------------------
def test_every_switch_leaves_an_event(point: Path, stacko: Runner, root: Path) -> None:
    stacko("cutover-stackpoint", "p", "new")
    stacko("fallback-stackpoint", "p")
    stacko("set-stackpoint-instance", "p", "new")
    stacko("commit-stackpoint", "p", "snap")
    events = info(stacko)["events"]
    assert [(e["action"], e["from"], e["to"]) for e in events] == [
        ("cutover", "old", "new"), ("fallback", "new", "old"), ("set", "old", "new"),
        ("commit", "new", "snap")]
    for e in events:
        assert set(e) >= {"time", "action", "from", "to", "reason"}
        assert RFC3339_Z.fullmatch(e["time"])
    head, row = stacko("list-stackpoints").out.splitlines()[:2]
    assert head.split()[-2:] == ["LAST", "EVENT"]
    assert re.search(r"Z commit new -> snap: commit-stackpoint$", row)


def test_events_are_bounded(point: Path, stacko: Runner, root: Path) -> None:
    stacko("umount-stackpoint", "p")
    stacko("new-stackpoint-instance", "p", "new")
    for n in range(28):
        stacko("set-stackpoint-instance", "p", "new" if n % 2 == 0 else "old")
    events = info(stacko)["events"]
    assert len(events) == 28 and events[-1]["to"] == "old"
    from stacko import events as events_mod
    data = json.loads((root / "stackpoints.json").read_text())
    many = [{"time": "2020-01-01T00:00:00Z", "action": "set", "from": "old", "to": "new",
             "reason": str(n)} for n in range(events_mod.MAX_EVENTS)]
    data["stackpoints"]["p"]["events"] = many
    (root / "stackpoints.json").write_text(json.dumps(data))
    stacko("set-stackpoint-instance", "p", "new")
    events = info(stacko)["events"]
    assert len(events) == events_mod.MAX_EVENTS >= 20
    assert events[0]["reason"] == "1" and events[-1]["reason"] == "set-stackpoint-instance"


# --- checked cutovers --------------------------------------------------------------
def test_a_check_that_passes_keeps_the_cutover(point: Path, stacko: Runner, root: Path,
                                               tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    check = (f'echo "$PWD $STACKO_STACKPOINT $STACKO_IMAGE $STACKO_DIR $(cat f)" > "{seen}"; '
             "echo all good")
    assert stacko("cutover-stackpoint", "p", "new", "--check", check).out == str(point)
    assert seen.read_text() == f"{point} p new {point} new\n"
    state = info(stacko)
    assert state["current"] == "new" and state["checking"] is None
    assert [e["action"] for e in state["events"]] == ["cutover", "check-passed"]
    assert (point / "f").read_text() == "new\n"


def failed_check(stacko: Runner, point: Path, check: str, *options: str) -> str:
    """Run a checked cutover that must fail: exit 1, back on old, new kept."""
    result = stacko("cutover-stackpoint", "p", "new", "--check", check, *options, rc=1)
    assert result.out == ""
    assert "'new'" in result.stderr and "fell back to image 'old'" in result.stderr
    assert (point / "f").read_text() == "old\n"
    state = info(stacko)
    assert state["current"] == "old" and state["mounted"] and state["checking"] is None
    assert "new" in [i["image"] for i in state["instances"]]
    last = state["events"][-1]
    assert (last["action"], last["from"], last["to"]) == ("check-failed", "new", "old")
    return result.stderr


def test_a_check_that_fails_falls_back_and_shows_its_last_lines(point: Path, stacko: Runner,
                                                                root: Path) -> None:
    (point / "on-old").write_text("kept")
    stderr = failed_check(stacko, point,
                          "for i in $(seq 1 30); do echo line $i; done; echo oops >&2; exit 3")
    assert "exited with status 3" in stderr
    assert "line 22" in stderr and "line 21" not in stderr and "oops" in stderr
    assert (point / "on-old").read_text() == "kept"
    assert info(stacko)["events"][-1]["reason"].startswith("the check `for i in")


def test_a_check_fails_even_when_stacko_is_started_with_sigchld_ignored(
        point: Path, stacko: Runner, root: Path) -> None:
    """A parent that ignores SIGCHLD (some daemons do) leaves it ignored across
    exec: the kernel then reaps stacko's children itself, and their exit
    status is lost (subprocess reports 0).  A failing check must still fail,
    a good signature or a mount still be told from a bad one."""
    ignoring = ("import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
                "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
    argv = [sys.executable, "-c", ignoring, "-m", "stacko", "--root", str(root),
            "cutover-stackpoint", "p", "new", "--check", "exit 3"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    assert proc.returncode == 1 and "exited with status 3" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (point / "f").read_text() == "old\n" and info(stacko)["current"] == "old"


def test_a_check_that_does_not_exist(point: Path, stacko: Runner, root: Path) -> None:
    stderr = failed_check(stacko, point, "/no/such/check-command")
    assert "127" in stderr and "not found" in stderr


def test_a_check_that_is_killed(point: Path, stacko: Runner, root: Path) -> None:
    assert "killed by SIGKILL" in failed_check(stacko, point, "kill -KILL $$")


def test_a_check_that_prints_megabytes_is_bounded(point: Path, stacko: Runner,
                                                  root: Path) -> None:
    # 20 MB, and time enough for them on a loaded machine: with 50 MB and the
    # default 60 s it failed once at a load average of 4 (why was not kept; a
    # timeout before "the end" is the likeliest).
    stderr = failed_check(stacko, point,
                          "head -c 20000000 /dev/zero | tr '\\0' 'x' | fold -w 1000; "
                          "echo the end; exit 1", "--check-timeout", "600")
    assert "the end" in stderr and len(stderr) < 10_000


def test_a_check_that_times_out_is_ended_whole(point: Path, stacko: Runner,
                                               root: Path) -> None:
    marker = f"stacko-test-timeout-{os.getpid()}"
    stderr = failed_check(stacko, point, f"echo waiting; sh -c 'sleep 300; : {marker}' & "
                                         f"trap '' TERM; sleep 300; : {marker}",
                          "--check-timeout", "1")
    assert "timed out after 1 s" in stderr and "waiting" in stderr
    assert gone(marker)


def test_a_check_that_leaves_children_behind(point: Path, stacko: Runner, root: Path) -> None:
    """The shell exits at once; its child holds the output pipe.  stacko does not
    wait for it, and ends it."""
    marker = f"stacko-test-child-{os.getpid()}"
    stderr = failed_check(stacko, point, f"sh -c 'sleep 300; : {marker}' & echo bye; exit 1",
                          "--check-timeout", "300")
    assert "exited with status 1" in stderr and "bye" in stderr
    assert gone(marker)


def cgroup_or_skip() -> None:
    from stacko import cgroups
    if cgroups.own_cgroup() is None:
        pytest.skip("no writable cgroup v2 mount here (cgroup v1 only, or read-only): "
                    "a check falls back to its process group, which setsid leaves")


def test_a_check_that_starts_sessions_of_its_own_is_ended_whole(point: Path, stacko: Runner,
                                                                root: Path) -> None:
    """setsid and a double fork leave the check's process group, not its cgroup.
    The escapees' cwd is in the stackpoint: alive, they would also keep the
    fallback by unmount (mount(8) backend) from happening."""
    cgroup_or_skip()
    marks = [f"1000.{os.getpid()}{n}" for n in (1, 2)]      # sleep durations nothing else has
    try:
        stderr = failed_check(stacko, point,
                              f"setsid sleep {marks[0]} & "
                              f"( setsid sh -c 'sleep {marks[1]} & exit 0' & ); "
                              "echo waiting; sleep 300", "--check-timeout", "1")
        assert "timed out after 1 s" in stderr and "waiting" in stderr
        assert gone(marks[0]) and gone(marks[1])
    finally:
        for mark in marks:
            kill_marked(mark)


def background_checked_cutover(root: Path, started: Path, marker: str,
                               check: str = "") -> subprocess.Popen:
    argv = [sys.executable, "-m", "stacko", "--root", str(root), "cutover-stackpoint", "p",
            "new", "--check",
            f"touch '{started}'; "
            + (check or f"{sys.executable} -c 'import time; time.sleep(300)' {marker}")]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(600):
        if started.exists():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the check never started: {proc.communicate()}")


def kill_marked(marker: str) -> None:
    """End the orphaned `sleep` of a check whose stacko was SIGKILLed (its shell
    dies with stacko; what the shell started lives on, as after any SIGKILL)."""
    for _ in range(200):
        if gone(marker):
            return
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if marker.encode() in f.read():
                            os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(0.05)
    raise AssertionError(f"processes marked {marker} do not end")


@pytest.mark.parametrize("finisher", ["mount-stackpoint", "check --repair"])
def test_a_cutover_killed_during_its_check_is_undone(point: Path, stacko: Runner, root: Path,
                                                     tmp_path: Path, finisher: str) -> None:
    marker = f"stacko-test-killed-{os.getpid()}"
    proc = background_checked_cutover(root, tmp_path / "started", marker)
    try:
        # The check runs without the lock: listings and other stackpoints go on...
        state = info(stacko)
        assert state["current"] == "new" and state["checking"]["running"] is True
        assert (point / "f").read_text() == "new\n"
        # ...but nothing may change this stackpoint under the check.
        before = snapshot(root)
        assert "being checked" in stacko("fallback-stackpoint", "p", rc=1).stderr
        stacko("umount-stackpoint", "p", rc=1)
        stacko("delete-stackpoint-instance", "p", "old", rc=1)
        assert snapshot(root) == before
        assert "nothing wrong" in stacko("check").stderr     # a running check is no problem
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = info(stacko)
        assert state["current"] == "new" and state["checking"]["running"] is False
        assert not gone(marker)        # what the check started outlives a SIGKILLed stacko
        if finisher == "mount-stackpoint":
            result = stacko("mount-stackpoint", "p")
            assert result.out == str(point) and "interrupted" in result.stderr
        else:
            assert "interrupted during its check" in stacko("check", rc=1).out
            assert "fell back" in stacko("check", "--repair").out
        assert gone(marker)            # ...until the undo ends it
    finally:
        proc.kill()
        kill_marked(marker)
    assert (point / "f").read_text() == "old\n"
    state = info(stacko)
    assert state["current"] == "old" and state["checking"] is None and state["mounted"]
    assert "new" in [i["image"] for i in state["instances"]]
    assert state["events"][-1]["action"] == "check-interrupted"
    stacko("check")


def test_what_a_killed_cutover_left_in_sessions_of_its_own_is_ended(
        point: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    """Without STACKO_CHECK_ID in its environment and in a session of its own, an
    escapee of a SIGKILLed stacko is found only by the check's cgroup."""
    cgroup_or_skip()
    marker = f"1000.{os.getpid()}3"
    proc = background_checked_cutover(root, tmp_path / "started", marker,
                                      f"env -i setsid sleep {marker} & sleep 300")
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)
        assert not gone(marker)
        assert "interrupted" in stacko("mount-stackpoint", "p").stderr
        assert gone(marker)
        assert (point / "f").read_text() == "old\n"
    finally:
        kill_marked(marker)


def test_a_cutover_killed_during_its_check_is_undone_after_a_reboot(
        point: Path, stacko: Runner, root: Path, tmp_path: Path) -> None:
    marker = f"stacko-test-reboot-{os.getpid()}"
    proc = background_checked_cutover(root, tmp_path / "started", marker)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        kill_marked(marker)
    subprocess.run(["umount", "-l", str(point)], check=True)   # the reboot
    assert "interrupted" in stacko("mount-stackpoint", "p").stderr
    assert (point / "f").read_text() == "old\n"


def test_sigterm_during_the_check_falls_back(point: Path, stacko: Runner, root: Path,
                                             tmp_path: Path) -> None:
    marker = f"stacko-test-term-{os.getpid()}"
    proc = background_checked_cutover(root, tmp_path / "started", marker)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # 143: 128 + SIGTERM, as a shell reports it (stacko.exitstatus)
    assert proc.returncode == 143 and b"Traceback" not in err and b"stacko: error:" in err
    assert gone(marker)
    assert (point / "f").read_text() == "old\n"
    state = info(stacko)
    assert state["current"] == "old" and state["checking"] is None
    assert state["events"][-1]["action"] == "check-failed"


def test_check_and_tries_together(point: Path, stacko: Runner, root: Path) -> None:
    stacko("cutover-stackpoint", "p", "new", "--check", "test -f f", "--tries", "1")
    assert info(stacko)["tentative"] == {"tries_left": 1, "tries": 1}
    back = stacko("fallback-stackpoint", "p")
    assert back.out == str(point) and info(stacko)["tentative"] is None


def test_a_new_cutover_first_undoes_one_killed_during_its_check(point: Path, stacko: Runner,
                                                                root: Path,
                                                                tmp_path: Path) -> None:
    marker = f"stacko-test-again-{os.getpid()}"
    proc = background_checked_cutover(root, tmp_path / "started", marker)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stacko("cutover-stackpoint", "p", "new", "--check", "test -f f")
        assert gone(marker)
    finally:
        kill_marked(marker)
    state = info(stacko)
    assert state["current"] == "new" and state["checking"] is None
    assert [e["action"] for e in state["events"]] == [
        "cutover", "check-interrupted", "cutover", "check-passed"]
    assert (point / "f").read_text() == "new\n"


def test_a_failed_check_whose_fallback_is_refused_is_undone_later(
        default_only: None, point: Path, stacko: Runner, root: Path) -> None:
    """A process that keeps the old instance's detached mount makes the fallback
    wait (two mounts must never write one layer): the check's failure says so,
    and check --repair falls back once the process has let go."""
    if not mountapi.supports_beneath():
        pytest.skip("no gapless switch here: the cutover itself is refused while busy")
    holder = subprocess.Popen(["sleep", "300"], cwd=point)
    try:
        result = stacko("cutover-stackpoint", "p", "new", "--check", "exit 1", rc=1)
        assert "falling back failed" in result.stderr and "still" in result.stderr
        assert "check --repair" in result.stderr
        state = info(stacko)
        assert state["current"] == "new" and state["checking"]["running"] is False
    finally:
        holder.kill()
        holder.wait()
    assert "fell back" in stacko("check", "--repair").out
    assert (point / "f").read_text() == "old\n"
    assert info(stacko)["current"] == "old"

"""run.py, the one place that starts processes, and supervise.py, which
watches an admin's check on a short leash."""
from __future__ import annotations

import os
import signal
import time

import pytest

from stacko import cgroups, log, run, supervise
from stacko.errors import CommandFailed


def test_output_and_locale() -> None:
    result = run.run(["sh", "-c", 'echo "$LC_ALL"; echo err >&2'])
    assert result.stdout == "C.UTF-8\n" and result.stderr == "err\n" and result.returncode == 0


def test_failure_carries_the_stderr() -> None:
    with pytest.raises(CommandFailed) as info:
        run.run(["sh", "-c", "echo broken >&2; exit 3"])
    assert info.value.returncode == 3 and "broken" in info.value.message
    assert run.run(["false"], check=False).returncode == 1


def test_a_missing_binary_is_named() -> None:
    with pytest.raises(CommandFailed, match="no-such-tool-here: command not found"):
        run.run(["no-such-tool-here"])


def test_verbose_logs_the_quoted_command_to_stderr(capsys, monkeypatch) -> None:
    monkeypatch.setattr(log, "verbose", True)
    run.run(["echo", "two words"], env={"X": "1"})
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "+ X=1 echo 'two words'" in captured.err


# --- spawn: a child whose output goes to files, waited for later ----------------------
def test_spawn_returns_at_once_and_wait_gives_what_run_gives(tmp_path) -> None:
    flag = tmp_path / "flag"
    child = run.spawn(["sh", "-c", f'while [ ! -e {flag} ]; do sleep 0.01; done; '
                                   'echo "$LC_ALL"; echo err >&2; exit 3'])
    flag.touch()            # the child is still waiting for this: spawn did not wait
    result = child.wait()
    assert (result.returncode, result.stdout, result.stderr) == (3, "C.UTF-8\n", "err\n")
    assert result == run.run(["sh", "-c", 'echo "$LC_ALL"; echo err >&2; exit 3'],
                             check=False)._replace(argv=result.argv)


def test_spawn_restores_the_signals_python_ignores() -> None:
    """As subprocess does: SIGXFSZ is what ends a child past its prlimit --fsize
    (gpgv's bound), and a child writing to a closed pipe gets SIGPIPE."""
    result = run.spawn(["prlimit", "--fsize=10", "sh", "-c",
                        "head -c 100 /dev/zero; echo unreached"]).wait()
    assert result.returncode == -signal.SIGXFSZ and result.stdout == "\0" * 10
    ignored = [int(line.split()[1], 16) for line in run.spawn(
        ["cat", "/proc/self/status"]).wait().stdout.splitlines() if line.startswith("SigIgn:")]
    assert len(ignored) == 1
    assert not ignored[0] & (1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1))
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN      # as Python left it


def test_spawn_reads_back_a_bounded_output_and_leaves_no_descriptor() -> None:
    before = set(os.listdir("/proc/self/fd"))
    result = run.spawn(["head", "-c", str(run.SPAWNED_OUTPUT + 5000), "/dev/zero"]).wait()
    assert result.returncode == 0 and len(result.stdout) == run.SPAWNED_OUTPUT
    assert set(os.listdir("/proc/self/fd")) == before


def test_spawn_of_a_missing_binary_is_named_and_leaves_no_descriptor(capsys,
                                                                   monkeypatch) -> None:
    monkeypatch.setattr(log, "verbose", True)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(CommandFailed, match="no-such-tool-here: command not found") as info:
        run.spawn(["no-such-tool-here", "two words"])
    assert info.value.returncode == 127
    assert set(os.listdir("/proc/self/fd")) == before
    assert "+ no-such-tool-here 'two words'" in capsys.readouterr().err


def test_spawn_with_stdin_stdout_and_stderr_closed(tmp_path) -> None:
    """A boot script may start stacko with `<&- >&- 2>&-`: the files spawn
    makes for the child's output must not take the numbers 0-2 it redirects."""
    import subprocess
    import sys
    out = tmp_path / "out"
    code = ("import os; from stacko import run; r = run.spawn(['sh', '-c', 'echo hi; echo err >&2'])"
            f".wait(); os.write(os.open({str(out)!r}, os.O_WRONLY | os.O_CREAT), "
            "repr((r.returncode, r.stdout, r.stderr)).encode())")
    subprocess.run(["sh", "-c", f'exec "$0" -c "$1" <&- >&- 2>&-', sys.executable, code],
                   cwd=tmp_path, env=dict(os.environ, PYTHONPATH=os.getcwd()), check=True)
    assert out.read_text() == repr((0, "hi\n", "err\n"))


def test_spawn_does_not_import_subprocess(tmp_path) -> None:
    import subprocess
    import sys
    code = ("import sys; from stacko import run; r = run.spawn(['echo', 'hi']).wait(); "
            "print(r.stdout.strip(), 'subprocess' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert out.stdout == "hi False\n", out.stderr


# --- run_check: an admin's check command, on a short leash (no root needed) -----------
def test_check_runs_in_its_directory_with_its_environment(tmp_path) -> None:
    result = supervise.run_check('echo "$PWD $STACKO_X $LC_ALL"; echo oops >&2', cwd=str(tmp_path),
                           env={"STACKO_X": "y"}, timeout=30)
    assert result.passed and result.returncode == 0
    assert result.output == f"{tmp_path} y C.UTF-8\noops\n"


def test_check_output_is_bounded_to_its_tail(tmp_path) -> None:
    result = supervise.run_check("head -c 20000000 /dev/zero | tr '\\0' 'x'; echo; echo last; exit 4",
                           cwd=str(tmp_path), env={}, timeout=60)
    assert result.returncode == 4 and not result.passed
    assert len(result.output) <= supervise.CHECK_KEEP and result.output.endswith("x\nlast\n")
    lines = result.last_lines()
    assert lines[-1] == "last" and len(lines[-2]) == 300 and lines[-2].startswith("…")
    assert result.describe() == "exited with status 4"


@pytest.fixture(params=["cgroup", "group"])
def leash(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The check in a cgroup of its own where cgroup v2 is usable, or (as where it
    is not) in its process group only."""
    if request.param == "group":
        monkeypatch.setattr(cgroups.CheckCgroup, "create", classmethod(lambda cls, name: None))
    return request.param


def test_check_timeout_ends_the_whole_group(tmp_path, leash) -> None:
    marker = tmp_path / "survivor"
    result = supervise.run_check(f"(sleep 2; touch '{marker}') & trap '' TERM; echo started; sleep 60",
                           cwd=str(tmp_path), env={}, timeout=0.5)
    assert result.returncode is None and result.describe() == "timed out"
    assert result.output == "started\n"
    import time
    time.sleep(2.5)
    assert not marker.exists()          # the background child was killed with the group


def test_check_does_not_wait_for_children_that_hold_its_output(tmp_path, leash) -> None:
    marker = tmp_path / "survivor"
    result = supervise.run_check(f"(sleep 2; touch '{marker}') & echo bye", cwd=str(tmp_path),
                           env={}, timeout=60)
    assert result.passed and result.output == "bye\n"
    import time
    time.sleep(2.5)
    assert not marker.exists()


def test_check_killed_or_missing(tmp_path) -> None:
    killed = supervise.run_check("kill -TERM $$", cwd=str(tmp_path), env={}, timeout=30)
    assert killed.returncode == -15 and killed.describe() == "was killed by SIGTERM"
    missing = supervise.run_check("/no/such/check", cwd=str(tmp_path), env={}, timeout=30)
    assert missing.returncode == 127 and "not found" in missing.output
    assert supervise.run_check("true", cwd=str(tmp_path), env={}, timeout=30).last_lines() == []


def test_a_check_that_cannot_start_is_a_failed_check(tmp_path) -> None:
    result = supervise.run_check("true", cwd=str(tmp_path / "gone"), env={}, timeout=30)
    assert not result.passed and result.returncode == 127
    assert "cannot run sh -c" in result.output


# --- a check that starts sessions of its own (setsid) --------------------------------
def cgroup_or_skip() -> str:
    if os.geteuid() != 0:
        pytest.skip("a cgroup of its own for a check needs root")
    own = cgroups.own_cgroup()
    if own is None:
        pytest.skip("no writable cgroup v2 mount here (cgroup v1 only, or read-only): "
                    "checks fall back to their process group")
    return own


CHECK_ID = "STACKO_CHECK_ID"          # names the check's cgroup (other tests may run checks)
TOKEN = f"test{os.getpid()}"


def marked(tag: str) -> str:
    """A sleep duration no other process has: it names the sleep in /proc/*/cmdline."""
    return f"1000.{os.getpid()}{tag}"


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def end(markers: list[str]) -> list[int]:
    """Kill what survived (so that a failed test leaves nothing); returns their pids."""
    left = [pid for m in markers for pid in processes_with(m)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


ESCAPEES = ("setsid sleep {a} & "                              # a session of its own
            "( setsid sh -c 'sleep {b} & exit 0' & ) ; "        # double fork, then setsid
            "sh -c 'trap \"\" TERM; exec setsid sleep {c}' & ")  # ignores SIGTERM, too


@pytest.mark.parametrize("ending", ["timeout", "exit"])
def test_a_check_leaves_no_process_behind_even_in_sessions_of_its_own(tmp_path,
                                                                     ending: str) -> None:
    own = cgroup_or_skip()
    markers = [marked(t) for t in "123"]
    command = ESCAPEES.format(a=markers[0], b=markers[1], c=markers[2]) + \
        ("echo started; sleep 60" if ending == "timeout" else "sleep 0.5; echo started")
    try:
        result = supervise.run_check(command, cwd=str(tmp_path), env={CHECK_ID: TOKEN}, timeout=3)
        assert result.output == "started\n"
        assert result.returncode == (None if ending == "timeout" else 0)
        assert end(markers) == []          # every escapee was ended with the check
    finally:
        end(markers)
    # and its cgroup is gone
    assert not os.path.exists(os.path.join(own, cgroups.PREFIX + TOKEN))


def test_a_cgroup_the_check_cannot_join_falls_back_to_the_group(tmp_path, monkeypatch) -> None:
    """Joining can fail where creating did not (a threaded cgroup, a delegation
    that stops short): the check runs all the same, and the cgroup is removed."""
    own = cgroup_or_skip()

    made = []
    create = cgroups.CheckCgroup.create

    def created(cls: type, name: str) -> cgroups.CheckCgroup | None:
        group = create(name)
        made.append(group and group.path)
        return group

    def refuse(self: cgroups.CheckCgroup) -> None:      # in the child, before exec
        raise OSError(95, "Operation not supported")
    monkeypatch.setattr(cgroups.CheckCgroup, "create", classmethod(created))
    monkeypatch.setattr(cgroups.CheckCgroup, "join", refuse)
    result = supervise.run_check("echo ran; exit 3", cwd=str(tmp_path), env={CHECK_ID: TOKEN},
                           timeout=30)
    assert result.returncode == 3 and result.output == "ran\n"
    assert made == [os.path.join(own, cgroups.PREFIX + TOKEN)] and not os.path.exists(made[0])


def test_without_a_cgroup_a_session_of_its_own_escapes(tmp_path, monkeypatch) -> None:
    """What the cgroup closes: with the process group alone (where cgroup v2 is not
    usable), a setsid child outlives the check.  docs/cutover.md says so."""
    monkeypatch.setattr(cgroups.CheckCgroup, "create", classmethod(lambda cls, name: None))
    marker = marked("4")
    try:
        result = supervise.run_check(f"setsid sleep {marker} & sleep 60", cwd=str(tmp_path),
                               env={}, timeout=0.5)
        assert result.returncode is None
        assert processes_with(marker) != []
    finally:
        end([marker])


def test_the_cgroup_of_a_check_is_found_and_ended_after_its_stacko_died(tmp_path) -> None:
    """A SIGKILLed stacko leaves its check's cgroup: end_leftovers (run by the next
    mount-stackpoint or check --repair) ends all of it, even processes that
    cleared their environment of STACKO_CHECK_ID."""
    cgroup_or_skip()
    from stacko import events
    pending = events.pending_check("old", "new", "x")
    group = cgroups.CheckCgroup.create(cgroups.PREFIX + pending.token)
    assert group is not None
    marker = marked("5")
    import subprocess
    try:
        child = subprocess.Popen(["env", "-i", "setsid", "--fork", "sleep", marker],
                                 preexec_fn=group.join)
        child.wait()                       # setsid forked: the sleep is an orphan now
        for _ in range(100):
            if processes_with(marker):
                break
            time.sleep(0.01)
        assert processes_with(marker) and group.pids()
        assert set(processes_with(marker)) <= set(events.end_leftovers(pending))
        for _ in range(100):
            if not processes_with(marker):
                break
            time.sleep(0.01)
        assert processes_with(marker) == []
        assert not os.path.exists(group.path)
    finally:
        end([marker])
        group.remove()

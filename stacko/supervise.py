"""Running an admin's check command (cutover-stackpoint --check) on a short leash.

The check is the one process stacko watches while it runs: its output is kept
in a bounded buffer, it has a deadline, and it is ended whole (its process
group, and its cgroup where cgroup v2 is usable: cgroups.py) whatever happens.
The child itself is started by run.start, the one place that starts processes.
"""
from __future__ import annotations

import os

from stacko import cgroups, run
from stacko.events import CHECK_ID
from stacko.lean import libc
from stacko.log import debug, log
from stacko.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Mapping

CHECK_KEEP = 64 * 1024     # bytes of a check's output kept: the tail is what says why
CHECK_LINES = 10           # lines of that tail shown in a failure
CHECK_GRACE = 2.0          # seconds between SIGTERM and SIGKILL for a check that timed out


@record
class CheckResult:
    returncode: int | None      # negative: killed by that signal; None: timed out
    output: str                    # the tail of stdout and stderr together

    @property
    def passed(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        if self.returncode is None:
            return "timed out"
        if self.returncode < 0:
            import signal
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = str(-self.returncode)
            return f"was killed by {name}"
        if self.returncode == 127:
            return "exited with status 127 (command not found?)"
        return f"exited with status {self.returncode}"

    def last_lines(self, count: int = CHECK_LINES, width: int = 300) -> list[str]:
        lines = self.output.rstrip("\n").split("\n")[-count:] if self.output.strip() else []
        # A long line keeps its end, which is where a message usually is.
        return [line if len(line) <= width else "…" + line[1 - width:] for line in lines]


def run_check(command: str, *, cwd: str, env: Mapping[str, str], timeout: float) -> CheckResult:
    """Run `sh -c command` in cwd, stdout and stderr to one bounded buffer.

    The check runs in a session (and process group) of its own and, where
    cgroup v2 is usable, in a cgroup of its own (cgroups.py), so that it is
    ended whole: on timeout (SIGTERM, then SIGKILL after CHECK_GRACE), when
    stacko is interrupted, and when its shell exits but leaves children behind
    (they are killed: a check that outlives its verdict would act on a stackpoint
    that may have fallen back).  Only the last CHECK_KEEP bytes are kept, so a
    check that prints gigabytes costs no memory.  The child also gets
    PR_SET_PDEATHSIG, so the shell dies with a SIGKILLed stacko.  Without a
    cgroup, a child that calls setsid itself escapes the group, as it would
    escape systemd's KillMode=process-group; in the cgroup it cannot.
    """
    import select
    import shlex
    import signal
    import time

    debug(f"+ (cd {shlex.quote(cwd)} && "
          + "".join(f"{k}={shlex.quote(v)} " for k, v in env.items())
          + f"sh -c {shlex.quote(command)})")
    c = libc()
    prctl = c.function("prctl", c.c_int)
    pr_set_pdeathsig = 1
    group = cgroups.CheckCgroup.create(cgroups.PREFIX + (env.get(CHECK_ID) or os.urandom(12).hex()))

    def prepare_child() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if group is not None:
            group.join()       # before exec: nothing the check starts is ever outside

    argv = ["sh", "-c", command]
    try:
        try:
            proc = run.start(argv, cwd=cwd, env=env, prepare=prepare_child)
        except run.ChildSetupFailed:      # joining the cgroup failed in the child
            assert group is not None
            debug(f"stacko: cannot run the check in cgroup {group.path}; its process "
                  "group is ended instead")
            group.remove()
            group = None
            proc = run.start(argv, cwd=cwd, env=env, prepare=prepare_child)
    except OSError as e:       # no sh, or the directory went away: a check that failed
        if group is not None:
            group.remove()
        return CheckResult(127, f"stacko: cannot run sh -c in {cwd}: {e.strerror or e}\n")
    if group is not None:
        debug(f"stacko: the check runs in cgroup {group.path}")
    else:
        debug("stacko: no usable cgroup v2 here: a process of the check that starts a "
              "session of its own (setsid) is not ended with it")
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    tail = bytearray()
    deadline = time.monotonic() + timeout
    timed_out = False

    def read_some() -> bool:
        """Read what is there; False at end of file."""
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            tail.extend(chunk)
            if len(tail) > 2 * CHECK_KEEP:
                del tail[:-CHECK_KEEP]

    def exited() -> bool:
        # WNOWAIT: the shell stays a zombie, so its pid (the group's id) cannot be
        # reused before the group is killed below.
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    try:
        open_ = True
        while not exited():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if open_:
                ready, _, _ = select.select([fd], [], [], min(left, 0.1))
                if ready:
                    open_ = read_some()
            else:
                time.sleep(min(left, 0.05))
        if timed_out:
            _signal_group(proc.pid, signal.SIGTERM)
            if group is not None:
                group.signal(signal.SIGTERM)
            end = time.monotonic() + CHECK_GRACE
            while not exited() and time.monotonic() < end:
                time.sleep(0.05)
    finally:
        _signal_group(proc.pid, signal.SIGKILL)     # what it left behind, or all of it
        if group is not None:
            group.kill()
        proc.wait()
        # Killed processes let go of their files (and the stackpoint, which a
        # fallback by unmount must find free) only once they are gone.
        end = time.monotonic() + CHECK_GRACE
        while _signal_group(proc.pid, 0) and time.monotonic() < end:
            time.sleep(0.01)
        if group is not None and not (group.wait_empty(CHECK_GRACE) and group.remove()):
            log(f"stacko: warning: processes of the check did not end after SIGKILL "
                f"({', '.join(map(str, group.pids())) or 'gone since'}); "
                f"their cgroup {group.path} is left behind")
    # What the group wrote before it ended; a grandchild in another group that
    # still holds the pipe must not keep stacko waiting.
    end = time.monotonic() + 0.5
    while time.monotonic() < end and select.select([fd], [], [], 0.05)[0] and read_some():
        pass
    proc.stdout.close()
    output = bytes(tail[-CHECK_KEEP:]).decode("utf-8", "replace")
    return CheckResult(None if timed_out else proc.returncode, output)


def _signal_group(pgid: int, signum: int) -> bool:
    """Signal a process group; False when it has no process left."""
    try:
        os.killpg(pgid, signum)
        return True
    except ProcessLookupError:
        return False

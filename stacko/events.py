"""The record of a stackpoint's switches, and who is checking a cutover.

Every switch (cutover, fallback, set, a failed check, a fallback at boot, a
confirm) appends an Event to the stackpoint's record in stackpoints.json, in
the same atomic write as the switch itself, so that the event and the switch
are one: an admin can always tell that a rollback happened, and why.  Only the
last MAX_EVENTS are kept, so the file stays small whatever the uptime.
"""
from __future__ import annotations

import os
import time

from stacko.records import Event, PendingCheck, Stackpoint, replace

MAX_EVENTS = 50           # per stackpoint; the contract asks for at least 20
REASON_MAX = 300          # characters: a reason is one line of the plain listing


def now() -> str:
    """RFC 3339, UTC, with Z (time, not datetime: cheaper to import)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def one_line(text: str, limit: int = REASON_MAX) -> str:
    """text with its whitespace runs (newlines too) made single spaces, shortened."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def add(point: Stackpoint, action: str, from_: str | None, to: str | None,
        reason: str = "") -> Stackpoint:
    """point with one more event, the oldest dropped beyond MAX_EVENTS."""
    event = Event(time=now(), action=action, from_=from_, to=to, reason=one_line(reason))
    return replace(point, events=(point.events + (event,))[-MAX_EVENTS:])


def describe(event: Event) -> str:
    """One line for the plain listing: time, action, from -> to, reason."""
    text = f"{event.time} {event.action}"
    if event.from_ != event.to:
        text += f" {event.from_ or '-'} -> {event.to or '-'}"
    elif event.to:
        text += f" {event.to}"
    return f"{text}: {event.reason}" if event.reason else text


# --- who runs a check ---------------------------------------------------------
def process_start(pid: int) -> int | None:
    """The start time of process pid (clock ticks since boot), None if there is none.
    A pid may be reused; pid, start time and boot id name one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 2, the command name, may hold spaces and parentheses: split after the
    # last ")"; the start time is field 22, the 20th after it.
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def pending_check(previous: str, image: str, command: str) -> PendingCheck:
    """The record of a check that this process is about to run."""
    pid = os.getpid()
    return PendingCheck(previous=previous, image=image, command=command, pid=pid,
                        start=process_start(pid) or 0, boot_id=boot_id(), started=now(),
                        token=os.urandom(12).hex())


def check_alive(pending: PendingCheck) -> bool:
    """Whether the command that recorded pending still runs (its check with it)."""
    return pending.boot_id == boot_id() and process_start(pending.pid) == pending.start


def is_mine(pending: PendingCheck) -> bool:
    return pending.pid == os.getpid() and check_alive(pending)


CHECK_ID = "STACKO_CHECK_ID"     # in the environment of every process of a check


def end_leftovers(pending: PendingCheck) -> list[int]:
    """SIGKILL what a check left running when its stacko was killed (the shell
    dies with stacko, through PR_SET_PDEATHSIG; what it started does not): all
    of the check's cgroup, named after its random id, where it had one (see
    cgroups.py), and every process with that id in its environment, which no
    reused pid can have.  Waits a little for them to go, so that they no longer
    hold the stackpoint."""
    import signal
    if not pending.token or pending.boot_id != boot_id():
        return []
    found = _end_cgroup(pending.token)
    needle = f"{CHECK_ID}={pending.token}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0") or int(entry) in found:
                    continue
            os.kill(int(entry), signal.SIGKILL)
            found.append(int(entry))
        except OSError:
            continue
    for _ in range(100):
        if not any(os.path.exists(f"/proc/{pid}") and process_start(pid) is not None
                   and _state(pid) != "Z" for pid in found):
            break
        time.sleep(0.02)
    return found


def _end_cgroup(token: str) -> list[int]:
    """Kill and remove the cgroup of the check with that id, if it is still there;
    returns the processes that were in it."""
    from stacko import cgroups
    path = cgroups.find(cgroups.PREFIX + token) if os.geteuid() == 0 else None
    if path is None:
        return []
    group = cgroups.CheckCgroup(path)
    pids = group.pids()
    group.kill()
    if group.wait_empty(2.0):
        group.remove()
    return pids


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2:].split()[0].decode()
    except (OSError, IndexError):
        return ""

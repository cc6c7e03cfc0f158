"""cutover-stackpoint --check: an update that does not prove itself is undone.

Three steps:

1. Under the exclusive lock: the cutover, as always (gapless where the kernel
   can), and in the same write of stackpoints.json a *pending check* record
   naming this process (pid, start time, boot id), the image that was current
   before, the history as it was and the command.
2. Without the lock: the check runs (supervise.run_check).  A long check must not
   block listings, boot mounts or other stackpoints for minutes, so the lock
   is released; what keeps the stackpoint safe meanwhile is the pending record:
   every command that would change this stackpoint (cutover, fallback, set,
   umount, delete-*, commit, prune) refuses while the process it names runs
   (pending.refuse_if_checking), and mount-stackpoint finds it mounted.
3. Under the exclusive lock again: the check passed -> the record is cleared;
   it failed or timed out -> the stackpoint is put back as it was before
   (pending.back_from_check; gapless where the kernel can), the checked
   instance is kept, exit 1.

Killed during step 2 (SIGKILL, a power cut), the record stays and names a
process that is gone: the next mount-stackpoint or `check --repair`, or any
command that would change the stackpoint, undoes the cutover first
(stackpoints.undo_interrupted_check; see pending.py).  Undo, not finish: the update
never proved itself, and the instance that was current before is the one
known to work.  SIGTERM and Ctrl-C during the check undo it right away.
"""
from __future__ import annotations

import os

from stacko import events, overlay, stackpoints, supervise
from stacko import pending as pending_mod
from stacko.errors import StackoError
from stacko.log import log
from stacko.records import replace
from stacko.state import Store

DEFAULT_TIMEOUT = 60.0


class CheckFailed(StackoError):
    pass


def checked_cutover(store: Store, name: str, image: str, command: str,
                    timeout: float = DEFAULT_TIMEOUT, tries: int | None = None,
                    action: str = "cutover", why: str = "") -> str:
    overlay.require_root("cutover-stackpoint")
    directory = stackpoints.cutover(store, name, image, tries=tries, check=command,
                                    action=action, why=why)
    with store.locked(exclusive=False):
        point = stackpoints.get(store.load_stackpoints(), name)
    pending = point.checking
    if pending is None or not events.is_mine(pending):
        return directory            # already on image: nothing was switched, nothing to check
    env = {"STACKO_STACKPOINT": name, "STACKO_IMAGE": image, "STACKO_DIR": directory,
           events.CHECK_ID: pending.token}
    try:
        result = supervise.run_check(command, cwd=directory, env=env, timeout=timeout)
    except BaseException:
        # SIGTERM or Ctrl-C: the check is ended (supervise.run_check); undo what was begun.
        try:
            _fall_back(store, name, "check-failed", "the check was interrupted")
        except StackoError as e:
            log(f"stacko: error: {e.message}")
        raise
    if result.passed:
        _settle(store, name)
        return directory
    what = (f"timed out after {timeout:g} s" if result.returncode is None
            else result.describe())
    lines = result.last_lines()
    reason = f"the check `{command}` {what}" + (f": {lines[-1]}" if lines else "")
    shown = "\n".join(f"    {line}" for line in lines) if lines else "    (no output)"
    try:
        previous = _fall_back(store, name, "check-failed", reason)
    except StackoError as e:
        # The switch back put everything as it was (on image, mounted), and the
        # pending record stays: once this process is gone, the next
        # mount-stackpoint or check --repair falls back, as after a kill.
        raise CheckFailed(
            f"the check of stackpoint {name!r} on image {image!r} {what}, and falling back "
            f"failed: {e.message}\nlast lines of the check's output:\n{shown}",
            hint=f"{e.hint + '; then ' if e.hint else ''}`stacko check --repair` falls "
                 "back") from None
    raise CheckFailed(
        f"the check of stackpoint {name!r} on image {image!r} {what}; fell back to image "
        f"{previous!r}, mounted at {directory}; the instance of {image!r} is kept with "
        f"its changes\nlast lines of the check's output:\n{shown}",
        hint=f"`stacko cutover-stackpoint {name} {image}` goes back to it; "
             f"`stacko delete-stackpoint-instance {name} {image}` removes it")


def _ours(store: Store, name: str) -> tuple:
    """(points, point) when the pending check is still this process's, else raises."""
    points = store.load_stackpoints()
    point = stackpoints.get(points, name)
    if point.checking is None or point.checking.pid != os.getpid():
        raise StackoError(f"stackpoint {name!r} was changed by another command during its "
                          "check; left as that command made it")
    return points, point


def _settle(store: Store, name: str) -> None:
    with store.locked(exclusive=True):
        points, point = _ours(store, name)
        pending = point.checking
        assert pending is not None
        new = events.add(replace(point, checking=None), "check-passed", pending.previous,
                         pending.image, f"the check `{pending.command}` passed")
        store.save_stackpoints({**points, name: new})


def _fall_back(store: Store, name: str, action: str, reason: str) -> str:
    """Back to the instance that was current before the checked cutover."""
    with store.locked(exclusive=True):
        points, point = _ours(store, name)
        pending = point.checking
        assert pending is not None
        images = store.load_images()
        new = pending_mod.back_from_check(point, action, reason + "; fell back")
        from stacko.switch import _switch
        _switch(store, images, points, new, None, mount=True,
                action="cutover-stackpoint --check")
        return pending.previous

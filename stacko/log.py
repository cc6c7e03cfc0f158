"""Messages to the user, on stderr: progress and diagnostics, and the ``-v`` log.

stdout is for results only (paths, names, JSON): everything else goes here.
The CLI sets ``verbose`` for ``-v``; every module below it logs through this
one, so that none has to import the one that runs commands to say what it does.
"""
from __future__ import annotations

import sys

verbose = False


def log(message: str) -> None:
    """Progress and diagnostics: always stderr, never stdout.  One write of the
    whole line (print writes the line and its newline apart): lines that
    threads log at once (push-image's uploads) do not run into each other."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def debug(message: str) -> None:
    """What only ``-v`` shows: each external command, mount and unmount call."""
    if verbose:
        log(message)

"""The one place that starts processes.

``run`` runs a command to its end through subwrap and returns its output;
``start`` starts a child that its caller watches as it runs (the admin's
check of a cutover: supervise.py).  Argument lists only: the one shell is the
check's ``sh -c``, which the contract asks for.  Children run with
``LC_ALL=C.UTF-8`` so that their messages are predictable; ``-v`` logs each
command to stderr.
"""
from __future__ import annotations

import os

from stacko import log as _log
from stacko.errors import CommandFailed
from stacko.log import debug
from stacko.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    import subprocess
    from collections.abc import Callable, Mapping, Sequence


@record
class Result:
    argv: tuple
    returncode: int
    stdout: str
    stderr: str


def child_env(extra: Mapping[str, str] | None = None) -> dict:
    env = dict(os.environ)
    env["LC_ALL"] = "C.UTF-8"
    env.pop("LANGUAGE", None)
    if extra:
        env.update(extra)
    return env


def load() -> None:
    """Import what run() needs (subwrap and subprocess, ~4.5 ms) ahead of its
    first call, while the caller waits anyway (pullsign.Checker.prepare: while
    a registry answers)."""
    import subwrap  # noqa: F401


def run(argv: Sequence[str], *, check: bool = True, cwd: str | None = None,
        env: Mapping[str, str] | None = None) -> Result:
    """Run argv; a non-zero exit raises CommandFailed unless check is False."""
    import subwrap  # imported here: listing commands never pay for subprocess

    argv = [str(a) for a in argv]
    if _log.verbose:    # shlex only for the -v log: a run without -v pays no ~0.7 ms for it
        import shlex
        prefix = f"(cd {shlex.quote(cwd)} && " if cwd else ""
        envs = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
        debug(f"+ {prefix}{envs}{shlex.join(argv)}" + (")" if prefix else ""))
    try:
        response = subwrap.run(argv, exit_handle=lambda r: None, cwd=cwd,
                               env=child_env(env))
    except FileNotFoundError:
        raise CommandFailed(f"{argv[0]}: command not found",
                            hint=f"install the package that provides {argv[0]}",
                            returncode=127) from None
    except NotADirectoryError as e:
        raise CommandFailed(f"cannot run {argv[0]}: {e}") from None
    result = Result(tuple(argv), response.return_code,
                    response.std_out.decode("utf-8", "replace"),
                    response.std_err.decode("utf-8", "replace"))
    if check and result.returncode != 0:
        raise CommandFailed(describe_failure(result), returncode=result.returncode,
                            stderr=result.stderr)
    return result


def describe_failure(result: Result) -> str:
    detail = result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}"
    return f"{result.argv[0]} failed: {detail}"


# --- a supervised child (supervise.run_check) -----------------------------------------
class ChildSetupFailed(Exception):
    """What prepare raised in the child, before exec: the child never ran."""


def start(argv: Sequence[str], *, cwd: str, env: Mapping[str, str],
          prepare: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    """Start argv in a session (and process group) of its own, stdin from
    /dev/null, stdout and stderr together into one pipe; the caller watches it.
    prepare runs in the child before exec (a failure: ChildSetupFailed).  An
    OSError (no such program, cwd gone) is raised as it is."""
    import subprocess

    try:
        return subprocess.Popen(list(argv), cwd=cwd, env=child_env(env),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True, preexec_fn=prepare)
    except subprocess.SubprocessError as e:
        raise ChildSetupFailed(str(e)) from None

"""The one place that runs external commands (through subwrap).

Argument lists only, never a shell.  Children run with ``LC_ALL=C.UTF-8`` so
that their messages are predictable; ``-v`` logs each command to stderr.
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Mapping, NamedTuple, Optional, Sequence

from stacko.errors import CommandFailed

verbose = False


def log(message: str) -> None:
    """Progress and diagnostics: always stderr, never stdout."""
    print(message, file=sys.stderr, flush=True)


def debug(message: str) -> None:
    if verbose:
        log(message)


class Result(NamedTuple):
    argv: tuple
    returncode: int
    stdout: str
    stderr: str


def child_env(extra: Optional[Mapping[str, str]] = None) -> dict:
    env = dict(os.environ)
    env["LC_ALL"] = "C.UTF-8"
    env.pop("LANGUAGE", None)
    if extra:
        env.update(extra)
    return env


def run(argv: Sequence[str], *, check: bool = True, cwd: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None) -> Result:
    """Run argv; a non-zero exit raises CommandFailed unless check is False."""
    import subwrap  # imported here: listing commands never pay for subprocess

    argv = [str(a) for a in argv]
    prefix = f"(cd {shlex.quote(cwd)} && " if cwd and verbose else ""
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

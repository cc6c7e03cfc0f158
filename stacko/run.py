"""The one place that starts processes.

``run`` runs a command to its end through subwrap and returns its output;
``start`` starts a child that its caller watches as it runs (the admin's
check of a cutover: supervise.py); ``spawn`` starts a child whose output goes
to files, for a caller with other work to do until it ends (the signed pull's
gpgv: signing/gpg.py).  Argument lists only: the one shell is the
check's ``sh -c``, which the contract asks for.  Children run with
``LC_ALL=C.UTF-8`` so that their messages are predictable; ``-v`` logs each
command to stderr.
"""
from __future__ import annotations

import os

from stacko import log as _log
from stacko.errors import CommandFailed
from stacko.lean import signal
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


def run(argv: Sequence[str], *, check: bool = True, cwd: str | None = None,
        env: Mapping[str, str] | None = None) -> Result:
    """Run argv; a non-zero exit raises CommandFailed unless check is False."""
    import subwrap  # imported here: listing commands never pay for subprocess

    argv = [str(a) for a in argv]
    log_command(argv, cwd, env)
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


def log_command(argv: list[str], cwd: str | None, env: Mapping[str, str] | None) -> None:
    if _log.verbose:    # shlex only for the -v log: a run without -v pays no ~0.7 ms for it
        import shlex
        prefix = f"(cd {shlex.quote(cwd)} && " if cwd else ""
        envs = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
        debug(f"+ {prefix}{envs}{shlex.join(argv)}" + (")" if prefix else ""))


def describe_failure(result: Result) -> str:
    detail = result.stderr.strip() or result.stdout.strip() or f"exit status {result.returncode}"
    return f"{result.argv[0]} failed: {detail}"


# --- a child with its output in files (gpg.Keyring) ------------------------------------
SPAWNED_OUTPUT = 1 << 20    # bytes of each of its stdout and stderr read back


class Spawned:
    """A child started by spawn; wait() for its Result."""

    def __init__(self, argv: list[str], pid: int, outputs: tuple[int, int]) -> None:
        self.argv, self.pid, self.outputs = argv, pid, outputs

    def wait(self) -> Result:
        try:
            _, status = os.waitpid(self.pid, 0)
        except BaseException:           # interrupted: leave no child behind
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except OSError:             # reaped already (SIGCHLD ignored: cli.main)
                pass
            raise
        finally:
            stdout, stderr = (_read_and_close(fd) for fd in self.outputs)
        return Result(tuple(self.argv), os.waitstatus_to_exitcode(status), stdout, stderr)


def spawn(argv: Sequence[str]) -> Spawned:
    """Start argv with stdin from /dev/null and its stdout and stderr into two
    files in memory, and return at once: the caller does other work while the
    child runs, then waits for its Result.  Files, not pipes: nothing needs
    pumping meanwhile, and under an RLIMIT_FSIZE (prlimit) all the child
    writes is bounded.  Started by os.posix_spawnp, as subprocess starts a
    child (SIGPIPE and SIGXFSZ back to their defaults, which Python ignores),
    without importing subprocess (~4.5 ms): the signed pull's gpgv runs this
    way (signing/gpg.py, docs/bench.md)."""
    argv = [str(a) for a in argv]
    log_command(argv, None, None)
    outputs = (_output_file("stdout"), _output_file("stderr"))
    try:
        pid = os.posix_spawnp(argv[0], argv, child_env(), file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, outputs[0], 1),
            (os.POSIX_SPAWN_DUP2, outputs[1], 2)],
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    except BaseException as e:
        for fd in outputs:
            os.close(fd)
        if isinstance(e, FileNotFoundError):
            raise CommandFailed(f"{argv[0]}: command not found",
                                hint=f"install the package that provides {argv[0]}",
                                returncode=127) from None
        if isinstance(e, OSError):
            raise CommandFailed(f"cannot run {argv[0]}: {e.strerror or e}") from None
        raise
    return Spawned(argv, pid, outputs)


def _output_file(name: str) -> int:
    """A file in memory for one of the child's outputs, numbered above 2: with
    stdin, stdout or stderr closed (a boot script's `<&-`), the lowest free
    number is one that the child's own redirections would replace."""
    fd = os.memfd_create(name)
    held = []
    while fd <= 2:
        held.append(fd)
        fd = os.dup(fd)
    for low in held:
        os.close(low)
    return fd


def _read_and_close(fd: int) -> str:
    """The first SPAWNED_OUTPUT bytes of one of spawn's files, as text."""
    try:
        chunks, offset = [], 0
        while offset < SPAWNED_OUTPUT:
            chunk = os.pread(fd, min(SPAWNED_OUTPUT - offset, 1 << 16), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


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

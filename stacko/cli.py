"""The stacko command line: main() parses a line, calls its handler, and
turns errors into messages and exit statuses.

The command table is cmdtable.py, the handlers handlers.py, the argparse
parser parser.py (loaded only for a line the quick parse below declines).
Logic lives elsewhere."""
from __future__ import annotations

import os
import sys

from stacko import __version__
from stacko.cmdtable import COMMANDS
from stacko.errors import Interrupted, StackoError
from stacko.handlers import Args, store
from stacko.lean import signal
from stacko.quickgrammar import MaybeOne, quick_grammar

TYPE_CHECKING = False
if TYPE_CHECKING:   # aliases for annotations only, never evaluated at run time
    from collections.abc import Sequence


def _terminate(signum: int, frame: object) -> None:
    raise Interrupted("terminated by a signal; what was begun has been undone")


# --- the quick parse: see quickgrammar.quick_grammar ---------------------------------
def quick_args(argv: Sequence[str]) -> Args | None:
    """The parse of argv as argparse would make it, for a plainly well-formed
    line of one of the quick commands; None for every other line."""
    from stacko.cmdtable import name
    from stacko.names import is_name
    values: dict[str, object] = {}
    words: list[str] = []
    command = None
    flags: tuple[str, ...] = ()
    options: dict = {}
    given = iter(argv)
    runs = 0                 # runs of positional words, options between them
    run = False
    for word in given:
        run, was_run = False, run
        if word == "--root" or word.startswith("--root="):
            root = next(given, None) if word == "--root" else word[len("--root="):]
            if root is None or root.startswith("-") or "root" in values:
                return None
            values["root"] = root
        elif word in ("-v", "--verbose"):
            values["verbose"] = True
        elif command is None:
            quick = next((c for c in COMMANDS if c.name == word and c.quick), None)
            if quick is None:
                return None
            command = word
            positional, flags, options = quick_grammar(quick)     # only this command's
            values.update((flag[2:].replace("-", "_"), False) for flag in flags)
            values.update((dest, default) for dest, _, default, _ in options.values())
        elif word in flags:
            values[word[2:].replace("-", "_")] = True
        elif word.startswith("--") and word.partition("=")[0] in options:
            flag, equals, value = word.partition("=")
            dest, convert, _, equals_only = options[flag]
            if not equals:
                if equals_only:
                    return None
                value = next(given, "-")
                if value.startswith("-"):
                    return None        # argparse's to judge (a negative number, a flag)
            try:
                values[dest] = convert(value) if convert is not None else value
            except Exception:   # noqa: BLE001  a bad value: argparse says what is wrong
                return None
        elif word.startswith("-"):
            return None
        else:
            words.append(word)
            run = True
            runs += not was_run
    if command is None:
        return None
    required = sum(not isinstance(check, MaybeOne) for _, check in positional)
    if not required <= len(words) <= len(positional):
        return None
    if required < len(positional) and runs > 1:
        return None          # argparse's to judge: see quickgrammar.MaybeOne
    values.update((dest, None) for dest, _ in positional[len(words):])
    for (dest, check), word in zip(positional, words):
        if isinstance(check, MaybeOne):
            check = check.check
        if check is name:
            if not is_name(word):
                return None
        else:
            try:
                check(word)
            except Exception:   # noqa: BLE001  argparse says what is wrong
                return None
        values[dest] = word
    handler = next(c.handler for c in COMMANDS if c.name == command)
    return Args(command=command, handler=handler, **values)


_quick = False       # the line was parsed by quick_args: see console_main
_command = ""        # the command of the line (main)
# Commands that end as a quick one does, though argparse parsed them (their
# grammar is beyond the quick parse): what they open they close, and the
# teardown costs an import-image ~12 ms (docs/bench.md).
QUICK_END = ("import-image",)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:
        print(f"stacko {__version__}")     # as argparse's version action prints it
        return 0
    global _quick, _command
    args = quick_args(argv)
    _quick = args is not None
    if args is None:
        from stacko.parser import parse    # here: argparse only for such a line
        args = parse(argv)
        if isinstance(args, int):
            return args
        _quick = args.command in QUICK_END
    _command = args.command
    if getattr(args, "verbose", False):
        from stacko import log
        log.verbose = True
    previous = signal.signal(signal.SIGTERM, _terminate)
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        # Ignored by a parent, and so inherited: the kernel would reap our
        # children itself and their exit status (a check's, gpgv's, mount's)
        # would be lost.  Their default, which their own children get too.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        return args.handler(args)
    except StackoError as e:
        print(f"stacko: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"stacko: hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("stacko: interrupted", file=sys.stderr)
        return 130           # exitstatus.INTERRUPTED; errors.Interrupted: 143 (SIGTERM)
    except BrokenPipeError:
        # The reader went away (`stacko list-images | head`): nothing more to say.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as e:
        # A system call failed where no code said what it means (a full disk,
        # a read-only one): the file, the system's words and a hint; no traceback.
        from stacko.errors import os_error
        failure = os_error(e, store(args).root)
        print(f"stacko: error: {failure.message}\nstacko: hint: {failure.hint}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def console_main() -> None:
    status = main()
    if quick_exit_safe():
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(status)       # the interpreter's own exit reports it, as ever
        # The interpreter's teardown (freeing every module and object) costs
        # a hot command a good part of its run (docs/startup.md) and does
        # nothing a quick command needs: its output is flushed, its files closed.
        os._exit(status)
    sys.exit(status)


def quick_exit_safe() -> bool:
    """Whether the process may end without the interpreter's teardown: only
    after a quickly parsed line (a known, short path) or one of QUICK_END, and
    only when no other thread runs and nothing that registers exit handlers
    was imported."""
    if not _quick:
        return False
    if {"logging", "concurrent.futures", "multiprocessing", "atexit"} & sys.modules.keys():
        return False
    if "stacko.registry.pull" in sys.modules and _command != "pull-image":
        # update-stackpoint's look is short; its pull and cutover end as ever.
        # pull-image ends as import-image does: its layers are unpacked as
        # that one's, and the teardown of what a signed pull loads (subprocess,
        # the policy's modules) cost it 16 ms, an unsigned one 11 (docs/bench.md).
        return False
    threading = sys.modules.get("threading")
    return threading is None or threading.active_count() == 1


def __getattr__(name: str) -> object:
    """The names of the table, the handlers and the parser, as stacko.cli had
    them (tools/ and tests use cli.build_parser …); the parser is imported
    only when one of its names is asked for."""
    if name == "QUICK":      # every quick command's grammar, for tests (made when asked)
        return {c.name: quick_grammar(c) for c in COMMANDS if c.quick}
    from stacko import cmdtable, handlers
    for module in (cmdtable, handlers):
        if hasattr(module, name):
            return getattr(module, name)
    from stacko import parser
    try:
        return getattr(parser, name)
    except AttributeError:
        raise AttributeError(f"module 'stacko.cli' has no attribute {name!r}") from None

"""The argparse parser, built from the command table (cmdtable.py).

Loaded only for a line the quick parse declines: argparse and what it imports
cost a hot command more than its work (docs/startup.md).  Help, usage errors,
unknown commands and their suggestions are its business.
"""
from __future__ import annotations

import sys

from stacko import __version__
from stacko.cmdtable import COMMANDS, IMAGE_COMMANDS, POINT_COMMANDS, UPKEEP_COMMANDS, Command
from stacko.handlers import terminal_columns
from stacko.state import DEFAULT_ROOT

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    import argparse
    from collections.abc import Sequence


_formatter: type | None = None


def formatter() -> type:
    """argparse's formatter, told the terminal's width: left to find it itself,
    it imports shutil (and with it bz2, lzma and zlib) for every parser, on
    every start, help or not.  Made on first use: argparse is imported only by
    a line the quick parse (quick_args) does not take."""
    global _formatter
    if _formatter is None:
        import argparse

        class Formatter(argparse.RawDescriptionHelpFormatter):
            def __init__(self, prog: str, indent_increment: int = 2,
                         max_help_position: int = 24, width: int | None = None) -> None:
                if width is None:
                    width = terminal_columns() - 2          # as argparse does
                super().__init__(prog, indent_increment, max_help_position, width)
        _formatter = Formatter
    return _formatter


def common_options() -> argparse.ArgumentParser:
    import argparse
    # SUPPRESS: given before or after the command, a shared option is not reset.
    common = argparse.ArgumentParser(add_help=False, formatter_class=formatter())
    common.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS,
                        help=f"state directory (default: $STACKO_ROOT or {DEFAULT_ROOT})")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log every external command to stderr")
    return common


def command_word(argv: Sequence[str]) -> str | None:
    """The word of the line that names the command, found without parsing it."""
    words = iter(argv)
    for word in words:
        if word == "--root":
            next(words, None)
        elif word == "--":
            return next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def wanted_command(argv: Sequence[str]) -> Command | None:
    """The command named on the line, found without parsing it, or None."""
    word = command_word(argv)
    return next((c for c in COMMANDS if word == c.name or word in c.aliases), None)


def suggestions(word: str) -> list[str]:
    """Commands the user may have meant by word: those it begins; else those
    nearly as close in spelling as the closest; else those containing it."""
    import difflib    # here: only a mistyped command pays for it
    names = [c.name for c in COMMANDS]
    found = [n for n in names if n.startswith(word)]
    if not found:
        ratio = {c.name: max(difflib.SequenceMatcher(None, word, n).ratio()
                             for n in (c.name,) + c.aliases) for c in COMMANDS}
        best = max(ratio.values())
        found = sorted((n for n in names if ratio[n] >= max(0.75, best - 0.08)),
                       key=lambda n: -ratio[n])
    if not found:
        found = [n for n in names if word in n]
    return found[:4]


def unknown_command(parser: argparse.ArgumentParser, word: str) -> int:
    """A word that names no command: say which ones it may have meant, not all."""
    from stacko import words
    close = suggestions(word) if word else []
    guess = f"; did you mean {words.join(close, 'or')}?" if close else ""
    sys.stderr.write(parser.format_usage())
    print(f"stacko: error: unknown command {word!r}{guess}", file=sys.stderr)
    print("stacko: hint: `stacko -h` lists the commands", file=sys.stderr)
    return 2


def command_groups() -> str:
    """The epilog of the whole parser's help: the commands by group."""
    import textwrap   # here: only the help shows it, and every start would pay for it
    return "\n".join(textwrap.fill(", ".join(names.split()), width=78, initial_indent=title,
                                   subsequent_indent="    ", break_on_hyphens=False)
                     for title, names in (("image commands: ", IMAGE_COMMANDS),
                                          ("stackpoint commands: ", POINT_COMMANDS),
                                          ("changes and upkeep: ", UPKEEP_COMMANDS)))


def build_parser(only: Command | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (for speed at every start) one with just the command
    that was asked for; help and usage errors get the whole one."""
    import argparse
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="stacko", parents=[common],
        description="Stackable overlayfs images, copy-on-write instances and stackpoints.",
        formatter_class=formatter(),
        epilog=command_groups() if only is None else None)
    parser.add_argument("--version", action="version", version=f"stacko {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    from stacko.examples import epilog as examples
    for command in COMMANDS if only is None else [only]:
        epilog = "\n\n".join(t for t in (command.epilog, examples(command.name)) if t)
        p = sub.add_parser(command.name, parents=[common], help=command.help,
                           description=command.help, aliases=list(command.aliases),
                           epilog=epilog or None,
                           formatter_class=formatter())
        for flags, kwargs in command.args:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(handler=command.handler)
    return parser


def parse(argv: list[str]) -> object:
    """argparse's parse of argv: the namespace, or the exit status of -h,
    --version or a usage error (then already reported)."""
    only = wanted_command(argv)
    if only is None and not {"-h", "--help", "--version"} & set(argv):
        word = command_word(argv)
        parser = build_parser()
        if word is None:        # as `stacko -h`, on stderr since it is no result
            parser.print_help(sys.stderr)
            print("stacko: error: no command given", file=sys.stderr)
            return 2
        return unknown_command(parser, word)
    try:
        return build_parser(only).parse_args(argv)
    except SystemExit as e:           # -h, --version, or a usage error (2)
        return e.code if isinstance(e.code, int) else 2

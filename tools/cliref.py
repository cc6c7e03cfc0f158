"""A plain model of stacko's argparse parser, for the generators in this directory.

gen_manpage.py and gen_completion.py read the parser that `stacko` itself
runs (stacko.cli.build_parser), never a copy of it, so that the man page and
the completion cannot drift from --help.  argparse keeps its subcommands in
private attributes; this module is the one place that reads them.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:         # run from a checkout: `python3 tools/gen_manpage.py`
    sys.path.insert(0, REPO)

from stacko import cli  # noqa: E402

#: The options every command takes (the shared parent parser), and --help.
HELP = ("-h", "--help")


@dataclass(frozen=True)
class Arg:
    dest: str
    flags: Tuple[str, ...]            # () for a positional
    metavar: str                      # "" for a flag that takes no value
    help: str
    required: bool
    optional_positional: bool         # nargs="?"
    choices: Tuple[str, ...]

    @property
    def takes_value(self) -> bool:
        return bool(self.metavar)

    def synopsis(self) -> str:
        if not self.flags:
            return f"[{self.metavar}]" if self.optional_positional else self.metavar
        text = self.flags[-1] + (f" {self.metavar}" if self.metavar else "")
        return text if self.required else f"[{text}]"


@dataclass(frozen=True)
class Command:
    name: str
    aliases: Tuple[str, ...]
    help: str
    args: Tuple[Arg, ...]             # without --help and the shared options

    @property
    def positionals(self) -> List[Arg]:
        return [a for a in self.args if not a.flags]

    @property
    def options(self) -> List[Arg]:
        return [a for a in self.args if a.flags]

    def synopsis(self) -> str:
        return " ".join([self.name] + [a.synopsis() for a in self.options]
                        + [a.synopsis() for a in self.positionals])


def _arg(action: argparse.Action) -> Arg:
    takes = action.nargs != 0
    if action.choices is not None and takes:
        metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        metavar = action.metavar if isinstance(action.metavar, str) else \
            (action.dest.upper() if takes else "")
    return Arg(dest=action.dest, flags=tuple(action.option_strings),
               metavar=metavar if takes else "", help=action.help or "",
               required=bool(action.required), optional_positional=action.nargs == "?",
               choices=tuple(str(c) for c in action.choices or ()))


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise SystemExit("the stacko parser has no subcommands")


def global_options(parser: Optional[argparse.ArgumentParser] = None) -> List[Arg]:
    parser = parser or cli.build_parser()
    return [_arg(a) for a in parser._actions
            if a.option_strings and not isinstance(a, argparse._SubParsersAction)]


def shared_flags() -> Tuple[str, ...]:
    """Flags of the options every command accepts (--root, -v …)."""
    return tuple(f for a in cli.common_options()._actions for f in a.option_strings)


def commands(parser: Optional[argparse.ArgumentParser] = None) -> List[Command]:
    """Every command, in the order the parser defines them, aliases folded in."""
    parser = parser or cli.build_parser()
    sub = _subparsers(parser)
    shared = set(shared_flags()) | set(HELP)
    found = []
    for pseudo in sub._choices_actions:
        name = pseudo.dest
        p = sub.choices[name]
        aliases = tuple(k for k, v in sub.choices.items() if v is p and k != name)
        args = tuple(_arg(a) for a in p._actions if not (set(a.option_strings) & shared))
        found.append(Command(name, aliases, pseudo.help or "", args))
    return found


def groups(cmds: Sequence[Command]) -> List[Tuple[str, List[Command]]]:
    """The commands under the headings of `stacko --help`; any other at the end."""
    by_name: Dict[str, Command] = {c.name: c for c in cmds}
    out: List[Tuple[str, List[Command]]] = []
    for title, names in (("IMAGE COMMANDS", cli.IMAGE_COMMANDS),
                         ("STACKPOINT COMMANDS", cli.POINT_COMMANDS),
                         ("CHANGES AND UPKEEP", cli.UPKEEP_COMMANDS)):
        listed = [by_name.pop(n) for n in names.split() if n in by_name]
        if listed:
            out.append((title, listed))
    if by_name:
        out.append(("OTHER COMMANDS", list(by_name.values())))
    return out


def emit(text: str, argv: List[str]) -> int:
    """A generator's output: to the file named by argv[1], else to stdout."""
    if len(argv) > 1 and argv[1] != "-":
        with open(argv[1], "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0

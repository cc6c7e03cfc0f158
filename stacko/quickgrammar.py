"""The quick parse's grammar (cli.quick_args): what each command the table
marks quick=True takes, read from its arguments in cmdtable.py, so that
there is one grammar."""
from __future__ import annotations

from stacko.cmdtable import boolean, name, non_negative, reference, seconds

TYPE_CHECKING = False
if TYPE_CHECKING:   # aliases for annotations only, never evaluated at run time
    from collections.abc import Callable, Sequence

    from stacko.cmdtable import Command

    QuickOption = tuple[str, Callable[[str], object] | None, object, bool]
    Grammar = tuple[tuple[tuple[str, Callable[[str], str]], ...], tuple[str, ...],
                    dict[str, QuickOption]]


# The commands boot scripts, prompts, monitors and timers run many times a
# minute, by their positional arguments, their flags (store_true options) and
# their options with one value.  argparse with its imports costs such a command
# more than its work (issues 13, 21, 22), so a line made only of these words,
# spelt out in full, is parsed by cli.quick_args; any other line, however
# slightly different (an abbreviation, -h, --, a bad name or value, a missing
# argument, a value that begins with -), goes to argparse, which alone reports
# usage errors.  tests/test_quickparse.py checks that the two parses agree.
# The grammar is the command table's: each command marked quick=True gives
# its positionals (names or REFs, checked as their type= checks them; any
# word where it has no type=; a last one that may be left out: MaybeOne), its
# flags, and its
# options: --opt VALUE or --opt=VALUE, the value converted by its type= (one
# of VALUE_TYPES) or checked against its choices (push-image's --compression);
# an option whose value is optional (nargs="?") only as --opt=VALUE, since
# whether argparse takes the next word depends on it.
POSITIONAL_TYPES = (name, reference)


class MaybeOne:
    """The check of a last positional that may be left out (nargs="?"): argparse
    gives it None when absent.  The quick parse takes such a line only when its
    positionals come in one run, no option between them (argparse fills a
    positional left out at the end of a run, and refuses a word after it)."""

    def __init__(self, check: Callable[[str], str]) -> None:
        self.check = check

    def __call__(self, text: str) -> str:
        return self.check(text)


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """The quick parse's check of an option with choices (and no type=): a
    value that is not one of them raises, and the line goes to argparse."""
    def check(text: str) -> str:
        if text not in choices:
            raise ValueError(text)
        return text
    return check


VALUE_TYPES = (None, seconds, non_negative, boolean)


def quick_grammar(command: Command) -> Grammar:
    """(the positionals' dests and checks, the flags spelt in full, the options
    spelt in full: {flag: (dest, type, default, only as --opt=VALUE)}) of a
    command the quick parse may take.  Any argument it cannot take is a
    mistake in the table."""
    positional: list[tuple[str, Callable[[str], str]]] = []
    flags: list[str] = []
    options: dict[str, QuickOption] = {}
    for names, kwargs in command.args:
        flag = names[0]
        keys = set(kwargs) - {"help", "metavar"}
        long_option = flag.startswith("--") and len(names) == 1
        if long_option and kwargs.get("action") == "store_true" and keys == {"action"}:
            flags.append(flag)
        elif long_option and keys <= {"type", "dest"} and kwargs.get("type") in VALUE_TYPES:
            dest = str(kwargs.get("dest") or flag[2:].replace("-", "_"))
            options[flag] = (dest, kwargs.get("type"), None, False)  # type: ignore[assignment]
        elif long_option and keys == {"type", "nargs", "const", "default"} \
                and kwargs["nargs"] == "?" and kwargs["type"] in VALUE_TYPES:
            options[flag] = (flag[2:].replace("-", "_"), kwargs["type"],  # type: ignore[assignment]
                             kwargs["default"], True)
        elif long_option and keys == {"choices", "default"} \
                and all(isinstance(c, str) for c in kwargs["choices"]):  # type: ignore[attr-defined]
            options[flag] = (flag[2:].replace("-", "_"),  # type: ignore[assignment]
                             one_of(kwargs["choices"]), kwargs["default"], False)  # type: ignore[arg-type]
        elif not flag.startswith("-") and keys == {"type"} and kwargs["type"] in POSITIONAL_TYPES \
                and not any(isinstance(check, MaybeOne) for _, check in positional):
            positional.append((flag, kwargs["type"]))  # type: ignore[arg-type]
        elif not flag.startswith("-") and not keys \
                and not any(isinstance(check, MaybeOne) for _, check in positional):
            positional.append((flag, str))     # any word (one that starts with '-': argparse's)
        elif not flag.startswith("-") and keys == {"type", "nargs"} and kwargs["nargs"] == "?" \
                and kwargs["type"] in POSITIONAL_TYPES:
            positional.append((flag, MaybeOne(kwargs["type"])))  # type: ignore[arg-type]
        else:
            raise ValueError(f"{command.name}: the quick parse cannot take {flag}")
    return tuple(positional), tuple(flags), options

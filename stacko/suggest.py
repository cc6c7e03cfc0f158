""""Did you mean …?" for a name that names nothing: the names spelt like it.

difflib is imported only when a name was not found: the commands that find
their names never pay for it.  A primitive: it imports nothing of stacko.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Iterable


SHOWN = 3              # a hint, not a listing


def close_names(word: str, names: Iterable[str]) -> list[str]:
    """The names word may have been meant as, closest first: spelt nearly
    alike (difflib's ratio), or differing only in case."""
    import difflib
    names = list(names)
    same_case = [n for n in names if n.lower() == word.lower() and n != word]
    found = difflib.get_close_matches(word, names, n=SHOWN, cutoff=0.6)
    return (same_case + [n for n in found if n not in same_case])[:SHOWN]


def did_you_mean(word: str, names: Iterable[str], otherwise: str) -> str:
    """A hint: "did you mean 'web'?" and then otherwise, or otherwise alone."""
    close = close_names(word, names)
    if not close:
        return otherwise
    from stacko import words
    return f"did you mean {words.join([repr(n) for n in close], 'or')}? {otherwise}"

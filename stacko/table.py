"""A plain table for listings: columns padded to their widest cell, the last
one free; on a terminal, fitted to its width.

Fitting, as `ps` and `systemctl` do it on a terminal: first the last column
gives way to its short form (list-stackpoints' LAST EVENT loses from, to and
the reason, which list-events shows); then a line still too wide is cut at
the terminal's edge with "…".  Piped (width None), nothing is cut, for the
scripts that read the table.  A primitive: it imports nothing.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Sequence



def lines(rows: Sequence[Sequence[str]], last: Sequence[str] | None = None) -> list[str]:
    """The rows as lines; last, if given, replaces the last column's cells."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    ends = [r[-1] for r in rows] if last is None else list(last)
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + end
            for r, end in zip(rows, ends)]


def fit(rows: Sequence[Sequence[str]], short_last: Sequence[str],
        width: int | None) -> list[str]:
    """The table as lines: whole when width is None, else fitted to width."""
    full = lines(rows)
    if width is None or max(map(len, full)) <= width:
        return full
    narrow = lines(rows, short_last)
    return [line if len(line) <= width else line[:max(width - 1, 1)] + "…"
            for line in narrow]

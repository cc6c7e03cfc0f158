"""Words in messages, in plain English: lists ("images 'a' and 'b'", not
"image 'a', image 'b'"), counts and sizes."""
from __future__ import annotations

SHOWN = 8          # names shown before "and N more": a message is not a listing


def join(items: list[str] | tuple[str, ...], last: str = "and") -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {last} {items[-1]}"


def named(noun: str, names: list[str] | tuple[str, ...], plural: str = "") -> str:
    """"image 'a'", "images 'a' and 'b'", "images 'a', 'b', … and 12 more"."""
    names = list(names)
    quoted = [repr(n) for n in names[:SHOWN]]
    if len(names) > SHOWN:
        quoted.append(f"{len(names) - SHOWN} more")
    return f"{noun if len(names) == 1 else plural or noun + 's'} {join(quoted)}"


def count(n: int, noun: str, plural: str = "") -> str:
    """"1 image", "3 images", "0 images"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def human(size: int | None) -> str:
    """du -h style: 1023, 1.0K, 12K, 3.4M (binary units)."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("", "K", "M", "G", "T", "P"):
        if value < 1024 or unit == "P":
            if unit == "":
                return str(size)
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")

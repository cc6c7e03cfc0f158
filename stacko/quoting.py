"""Names and paths in messages, quoted as `ls --quoting-style=shell-escape` does.

A path from outside (an archive member, a file of an imported directory, a
--path an admin typed) may hold spaces, quotes, a newline or bytes that are
not UTF-8.  Printed raw, a newline splits the message in two and an escape
sequence reaches the terminal; printed with Python's repr, it is not what a
shell reads back.  quote() gives what GNU ls shows (coreutils' quotearg,
shell-escape style), so that the admin can paste it into a command line:

    abc           -> abc
    a b           -> 'a b'
    a'b           -> "a'b"
    a<newline>b   -> 'a'$'\\n''b'

A primitive: it imports nothing, and nothing of stacko below it.
"""
from __future__ import annotations

# Never quoted, wherever they stand (quotearg's "no problems" characters);
# '#' and '~' only after the first character; every other printable
# character outside ASCII too.
_PLAIN = frozenset("%+,-./0123456789:@ABCDEFGHIJKLMNOPQRSTUVWXYZ]_"
                   "abcdefghijklmnopqrstuvwxyz{}")
# Quoted, but still writable between double quotes (quotearg's
# c_and_shell_quote_compat): a single quote inside is then "it's", not 'it'\''s'.
_DOUBLE_OK = frozenset(" '#~")
_NAMED = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
          "\v": "\\v"}


def _plain(ch: str, first: bool) -> bool:
    if ch in _PLAIN:
        return True
    if ch in "#~":
        return not first
    return _printable(ch) and ord(ch) > 0x7f


def _undecodable(ch: str) -> bool:
    """A byte that was not UTF-8, as os.fsdecode (surrogateescape) gives it."""
    return "\udc80" <= ch <= "\udcff"


def _escape(ch: str) -> str:
    """A character the shell reads only through $'…'."""
    if ch in _NAMED:
        return _NAMED[ch]
    if _undecodable(ch):
        return f"\\{ord(ch) - 0xdc00:03o}"
    return "".join(f"\\{b:03o}" for b in ch.encode("utf-8", "surrogatepass"))


def _printable(ch: str) -> bool:
    """As glibc's iswprint in a UTF-8 locale: ASCII's printable ones, and beyond
    ASCII all but the C1 controls and undecodable bytes (a zero-width space
    or a combining mark is printed, as ls prints it)."""
    if ord(ch) < 0x80:
        return " " <= ch <= "~"
    return ord(ch) > 0x9f and not _undecodable(ch)


def quote(text: str) -> str:
    """text as `ls --quoting-style=shell-escape` shows it, in a UTF-8 locale."""
    if not text:
        return "''"
    if all(_plain(ch, i == 0) for i, ch in enumerate(text)) and text not in ("{", "}"):
        return text
    if "'" in text and all(_plain(ch, i == 0) or ch in _DOUBLE_OK
                           for i, ch in enumerate(text)):
        return f'"{text}"'
    out = ["'"]
    quoted = True           # inside '…'
    for ch in text:
        if _printable(ch):
            if not quoted:
                out.append("'")
                quoted = True
            out.append("'\\''" if ch == "'" else ch)
        else:
            if quoted:
                out.append("'$'")
                quoted = False
            elif out[-1].endswith("'"):       # one $'…' for a run of escapes
                out[-1] = out[-1][:-1]
            out.append(f"{_escape(ch)}'")
    if quoted:
        out.append("'")
    return "".join(out)


def quoted(text: str) -> str:
    """quote(), in single quotes even where the shell needs none: a name set in
    a sentence ("no image named 'web'") stands out from the words around it."""
    shown = quote(text)
    return f"'{shown}'" if shown == text else shown


def escaped(text: str) -> str:
    """text on one line for a listing: backslash, control characters and bytes
    that are not UTF-8 as escapes (as `ls -b` writes them), the rest as it is."""
    if all(_printable(ch) for ch in text) and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif _printable(ch):
            out.append(ch)
        elif _undecodable(ch):
            out.append(f"\\x{ord(ch) - 0xdc00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)

"""The fields of a tar header and the records of a PAX header, checked as
``tarstream`` reads them: numbers must be octal digits or base-256 and within
bounds, PAX records framed exactly, a header's checksum right (unsigned, or
signed as some old tars wrote it).  Split out of ``tarstream``, which reads
the members.
"""
from __future__ import annotations

import struct
from zlib import adler32

from stacko.errors import StackoError

MAX_ID = (1 << 32) - 2       # (uid_t)-1 means "leave as it is" to chown(2)
_SIGNED = struct.Struct("148b8x356b")


class BadLayer(StackoError):
    """A layer tar that cannot be unpacked (corrupt, or an unsupported member)."""


def as_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def field(raw: bytes) -> bytes:
    """A NUL-terminated header field."""
    end = raw.find(0)
    return raw if end < 0 else raw[:end]


def number(raw: bytes, what: str) -> int:
    """A header's number: octal digits (spaces and NULs around them), or base-256
    (GNU, star) when the first byte has its top bit set."""
    first = raw[0]
    if first & 0x80:
        if first not in (0x80, 0xFF):
            raise BadLayer(f"a tar header has a malformed {what}")
        value = int.from_bytes(raw[1:], "big")
        return value - (1 << (8 * len(raw) - 8)) if first == 0xFF else value
    digits = field(raw).strip(b" ")
    if not digits:
        return 0
    if not digits.isdigit():
        raise BadLayer(f"a tar header has a malformed {what}")
    try:
        return int(digits, 8)
    except ValueError:         # an 8 or a 9
        raise BadLayer(f"a tar header has a malformed {what}") from None


def decimal(raw: bytes, what: str) -> int:
    if not raw.isdigit() or len(raw) > 20:
        raise BadLayer(f"a PAX header has a malformed {what} ({as_text(raw[:40])!r})")
    return int(raw)


def checked_id(value: int, what: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise BadLayer(f"a tar member has an impossible {what} ({value})")
    return value


def pax_time_ns(raw: bytes) -> int:
    """A PAX time, [-]seconds[.fraction], in nanoseconds (a float would round)."""
    sign = -1 if raw[:1] == b"-" else 1
    whole, _, fraction = raw[1 if sign < 0 else 0:].partition(b".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()) or len(whole) > 20:
        raise BadLayer(f"a PAX header has a malformed mtime ({as_text(raw[:40])!r})")
    return sign * (int(whole) * 1_000_000_000 + int((fraction[:9] or b"0").ljust(9, b"0")))


def parse_pax(data: bytes, into: dict[bytes, bytes], runs: list[bytes]) -> None:
    """The records of a PAX header, "LENGTH KEY=VALUE\\n" each, into into (an
    empty value removes the key); GNU sparse 0.0's repeated offset and numbytes
    records, in order, into runs."""
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0 and data.count(0, pos) == end - pos:
            return                          # padding after the last record
        space = data.find(b" ", pos, min(end, pos + 21))
        if space < 0 or not data[pos:space].isdigit():
            raise BadLayer("a PAX header has a malformed record")
        length = int(data[pos:space])
        stop = pos + length
        if stop > end or length < space - pos + 4 or data[stop - 1] != 0x0A:
            raise BadLayer("a PAX header has a record of a wrong length")
        key, eq, value = data[space + 1:stop - 1].partition(b"=")
        if not eq or not key:
            raise BadLayer("a PAX header has a malformed record")
        if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes"):
            runs.append(value)
        elif value:
            into[key] = value
        else:
            into.pop(key, None)
        pos = stop


def size_of(head: bytes) -> int:
    size = number(head[124:136], "size")
    if size < 0:
        raise BadLayer("a tar header has a negative size")
    return size


def byte_sum(data: bytes) -> int:
    """The sum of the bytes of data, at most 256 bytes long: the low half of its
    Adler-32 is 1 + that sum modulo 65521, which 256 bytes never reach (a
    tenth of the time of sum() over a header)."""
    return (adler32(data) & 0xFFFF) - 1


def check_sum(head: bytes, offset: int) -> None:
    stored = number(head[148:156], "checksum")
    # The field itself counts as eight spaces.
    if stored == byte_sum(head[:256]) + byte_sum(head[256:]) - sum(head[148:156]) + 256:
        return
    if stored == sum(_SIGNED.unpack(head)) + 256:       # the signed sum of old tars
        return
    raise BadLayer(f"the layer tar has a corrupt header at byte {offset} (its checksum "
                   "does not match)" if offset else
                   "the layer is not a valid tar archive: bad checksum")

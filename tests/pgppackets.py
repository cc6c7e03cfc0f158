"""Just enough of OpenPGP's packet framing (RFC 4880 4.2) for tests to damage a
signed message at a chosen place: gpg compresses what it signs, so a byte
flipped in the message as written lands somewhere unpredictable (in the
issuer's key id, in an unsigned field, in the signature)."""
from __future__ import annotations

import bz2
import zlib
from typing import Dict, List, Tuple

LITERAL, SIGNATURE, COMPRESSED = 11, 2, 8


def packets(data: bytes) -> List[Tuple[int, int, int]]:
    """(tag, start of the body, end of the body) of each packet of data."""
    out, at = [], 0
    while at < len(data):
        ctb = data[at]
        assert ctb & 0x80, f"not an OpenPGP packet at offset {at}"
        if ctb & 0x40:                                   # new format
            tag, first = ctb & 0x3F, data[at + 1]
            if first < 192:
                size, at = first, at + 2
            elif first < 224:
                size, at = ((first - 192) << 8) + data[at + 2] + 192, at + 3
            else:
                assert first == 255, "partial body lengths are not expected here"
                size, at = int.from_bytes(data[at + 2:at + 6], "big"), at + 6
        else:
            tag, kind = (ctb >> 2) & 0x0F, ctb & 3
            if kind == 3:                                # indeterminate: to the end
                size, at = len(data) - at - 1, at + 1
            else:
                n = 1 << kind
                size, at = int.from_bytes(data[at + 1:at + 1 + n], "big"), at + 1 + n
        out.append((tag, at, at + size))
        at += size
    assert at == len(data), "a packet runs past the end"
    return out


def uncompressed(message: bytes) -> bytes:
    """The same signed message without its compression: the packets that the
    compressed packet holds, which gpg reads as well."""
    first = packets(message)[0]
    if first[0] != COMPRESSED:
        return message
    algo, body = message[first[1]], message[first[1] + 1:first[2]]
    if algo == 1:
        return zlib.decompressobj(-15).decompress(body)
    if algo == 2:
        return zlib.decompress(body)
    assert algo == 3, f"compression algorithm {algo}"
    return bz2.decompress(body)


def tampered(message: bytes, where: str) -> bytes:
    """The uncompressed message with one bit flipped at a named place:
    "payload" (the signed data), "signature" (the low byte of the last
    signature value) or "digest algorithm" (the signature packet's)."""
    plain = bytearray(uncompressed(message))
    bodies: Dict[int, Tuple[int, int]] = {tag: (start, end) for tag, start, end in packets(plain)}
    start, end = bodies[LITERAL if where == "payload" else SIGNATURE]
    at = {"payload": end - 1 - (end - start) // 4, "signature": end - 1,
          "digest algorithm": start + 3}[where]      # v4: version, class, key algo, digest algo
    plain[at] ^= 0x40
    return bytes(plain)

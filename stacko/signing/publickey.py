"""Public keys from their DER (PKIX SubjectPublicKeyInfo, or PKCS#1 for RSA),
without cryptography's ``serialization`` module.

A pull checked by a sigstoreSigned policy loads its keys on every run, and
``cryptography.hazmat.primitives.serialization`` imports its SSH support and
with it dataclasses and inspect: about as much again as the ECDSA code itself
(docs/signing.md).  The three structures a policy's key can have are small, so
they are read here, strictly (DER, no trailing bytes), and handed to the
primitives' own constructors, which check the key itself (a point on the curve).

    SubjectPublicKeyInfo ::= SEQUENCE { SEQUENCE { OID, params }, BIT STRING }
    RSAPublicKey         ::= SEQUENCE { INTEGER n, INTEGER e }
"""
from __future__ import annotations

SEQUENCE, INTEGER, BIT_STRING, OID, NULL = 0x30, 0x02, 0x03, 0x06, 0x05
EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")            # 1.2.840.10045.2.1
CURVES = {bytes.fromhex("2a8648ce3d030107"): "SECP256R1",  # 1.2.840.10045.3.1.7
          bytes.fromhex("2b81040022"): "SECP384R1",        # 1.3.132.0.34
          bytes.fromhex("2b81040023"): "SECP521R1"}        # 1.3.132.0.35
RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")       # 1.2.840.113549.1.1.1
ED25519 = bytes.fromhex("2b6570")                          # 1.3.101.112


class BadKey(ValueError):
    pass


def items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, contents) of the DER elements that make up data, all of it."""
    found = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise BadKey("truncated")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 4 or pos + count > len(data):
                raise BadKey("bad length")
            length = int.from_bytes(data[pos:pos + count], "big")
            if length < 0x80 or data[pos] == 0:      # DER: the shortest form only
                raise BadKey("non-minimal length")
            pos += count
        if pos + length > len(data):
            raise BadKey("truncated")
        found.append((tag, data[pos:pos + length]))
        pos += length
    return found


def expect(data: bytes, *tags: int) -> list[bytes]:
    parts = items(data)
    if [tag for tag, _ in parts] != list(tags):
        raise BadKey("unexpected structure")
    return [contents for _, contents in parts]


def unsigned(contents: bytes) -> int:
    if not contents or contents[0] & 0x80:
        raise BadKey("not a positive integer")
    if len(contents) > 1 and contents[0] == 0 and not contents[1] & 0x80:
        raise BadKey("non-minimal integer")
    return int.from_bytes(contents, "big")


def rsa_key(pkcs1: bytes) -> object:
    from cryptography.hazmat.primitives.asymmetric import rsa
    (body,) = expect(pkcs1, SEQUENCE)
    n, e = (unsigned(x) for x in expect(body, INTEGER, INTEGER))
    return rsa.RSAPublicNumbers(e, n).public_key()


def from_pkcs1(der: bytes) -> object:
    """An RSA key from PKCS#1 RSAPublicKey (PEM ``RSA PUBLIC KEY``)."""
    try:
        return rsa_key(der)
    except (ValueError, TypeError) as e:         # BadKey, or the primitive's own refusal
        raise BadKey(str(e)) from None


def from_spki(der: bytes) -> object:
    """An ECDSA (P-256, P-384, P-521), RSA or Ed25519 key from SubjectPublicKeyInfo."""
    try:
        (body,) = expect(der, SEQUENCE)
        parts = items(body)
        if [tag for tag, _ in parts] != [SEQUENCE, BIT_STRING]:
            raise BadKey("not a SubjectPublicKeyInfo")
        algorithm, bits = parts[0][1], parts[1][1]
        if not bits or bits[0] != 0:
            raise BadKey("a key of unused bits")
        key = bits[1:]
        params = items(algorithm)
        if not params or params[0][0] != OID:
            raise BadKey("no algorithm")
        oid, rest = params[0][1], params[1:]
        if oid == EC_PUBLIC_KEY:
            if len(rest) != 1 or rest[0][0] != OID or rest[0][1] not in CURVES:
                raise BadKey("an elliptic curve other than P-256, P-384 and P-521")
            if not key or key[0] != 0x04:          # Go's x509 takes uncompressed points only
                raise BadKey("not an uncompressed point")
            from cryptography.hazmat.primitives.asymmetric import ec
            curve = getattr(ec, CURVES[rest[0][1]])()
            return ec.EllipticCurvePublicKey.from_encoded_point(curve, key)
        if oid == RSA_ENCRYPTION:
            if rest not in ([], [(NULL, b"")]):
                raise BadKey("RSA with parameters")
            return rsa_key(key)
        if oid == ED25519:
            if rest:
                raise BadKey("Ed25519 with parameters")
            from cryptography.hazmat.primitives.asymmetric import ed25519
            return ed25519.Ed25519PublicKey.from_public_bytes(key)
        raise BadKey("not an ECDSA, RSA or Ed25519 key")
    except BadKey:
        raise
    except (ValueError, TypeError) as e:         # the primitive's own refusal
        raise BadKey(str(e)) from None

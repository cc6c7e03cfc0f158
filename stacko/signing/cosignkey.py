"""Sigstore key files in cosign's format, as skopeo and cosign write and read them.

The private key is PKCS#8 DER, encrypted by go-securesystemslib's ``encrypted``
package (sigstore/cosign pkg/cosign/keys.go): a JSON envelope

    {"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":B64},
     "cipher":{"name":"nacl/secretbox","nonce":B64},"ciphertext":B64}

(Go's []byte is standard base64), the whole of it the body of a PEM block
labelled ``ENCRYPTED COSIGN PRIVATE KEY`` (skopeo 1.9 reads only that label)
or ``ENCRYPTED SIGSTORE PRIVATE KEY`` (newer cosign).  The key of the secretbox
is scrypt(passphrase, salt, N, r, p, 32 bytes); N is one of the three values
the Go package accepts (2^15 legacy, which we write; 2^16 as skopeo 1.18
writes; 2^17), any other is refused before any work, as there, so that a
crafted file cannot make us spend minutes and gigabytes.  The public key is a
PEM ``PUBLIC KEY`` (PKIX).

The ``cryptography`` and ``PyNaCl`` packages are imported inside the functions:
only the signing commands, and a policy that names a sigstore key, pay for them.
"""
from __future__ import annotations

import base64
import binascii
import os

from stacko.errors import StackoError
from stacko.quoting import quote

COSIGN_LABEL = "ENCRYPTED COSIGN PRIVATE KEY"
SIGSTORE_LABEL = "ENCRYPTED SIGSTORE PRIVATE KEY"
PRIVATE_LABELS = (COSIGN_LABEL, SIGSTORE_LABEL)
PUBLIC_LABELS = ("PUBLIC KEY", "RSA PUBLIC KEY")
SCRYPT_N = (1 << 15, 1 << 16, 1 << 17)     # go-securesystemslib's legacy, standard, owasp
SCRYPT_R, SCRYPT_P = 8, 1
WRITE_N = 1 << 15                          # what skopeo 1.9 and every cosign read
SALT_SIZE, NONCE_SIZE, KEY_SIZE = 32, 24, 32
MAX_KEY_FILE = 64 << 10                    # a key file is a few hundred bytes


class KeyUnreadable(StackoError):
    """A key file that is not what cosign writes, or that cannot be used."""


class WrongPassphrase(KeyUnreadable):
    pass


def require(nacl: bool = True) -> None:
    """The libraries (PyNaCl only for private keys), or an error that says how
    to get them (not a traceback)."""
    wanted = [("cryptography", "cryptography", "python3-cryptography")]
    if nacl:
        wanted.append(("nacl", "PyNaCl", "python3-nacl"))
    for module, package, debian in wanted:
        try:
            __import__(module)
        except ImportError:
            raise StackoError(f"sigstore keys and signatures need the Python package {package}",
                              hint=f"pip install {package}, or apt-get install {debian}"
                              ) from None


# --- PEM -------------------------------------------------------------------------
def pem_encode(label: str, der: bytes) -> bytes:
    """As Go's pem.EncodeToMemory: 64 base64 characters a line."""
    text = base64.b64encode(der).decode("ascii")
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"])
            + "\n").encode("ascii")


def pem_decode(data: bytes, labels: tuple[str, ...], what: str) -> tuple[str, bytes]:
    """The label and body of the first PEM block of data (Go's pem.Decode takes
    the first block too and ignores what surrounds it); its label must be one
    of labels."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyUnreadable(f"{what} is not a PEM file") from None
    begin = text.find("-----BEGIN ")
    if begin < 0:
        raise KeyUnreadable(f"{what} is not a PEM file (no -----BEGIN line)")
    head_end = text.find("-----", begin + len("-----BEGIN "))
    if head_end < 0:
        raise KeyUnreadable(f"{what} is not a PEM file (a broken -----BEGIN line)")
    label = text[begin + len("-----BEGIN "):head_end]
    end_line = f"-----END {label}-----"
    end = text.find(end_line, head_end)
    if end < 0:
        raise KeyUnreadable(f"{what}: its PEM block {label!r} has no {end_line} line")
    if label not in labels:
        raise KeyUnreadable(f"{what} holds a PEM {label!r} block, where "
                            + " or ".join(repr(x) for x in labels) + " was expected")
    body = text[head_end + 5:end]
    if ":" in body:        # RFC 1421 headers (Proc-Type, DEK-Info): not cosign's
        raise KeyUnreadable(f"{what} has PEM headers that cosign never writes")
    try:
        return label, base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KeyUnreadable(f"{what}: its PEM block is not valid base64") from None


# --- the encrypted envelope ----------------------------------------------------------
def derive(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    import hashlib
    # hashlib's default memory bound (OpenSSL's 32 MiB) is just under N=2^15's need.
    return hashlib.scrypt(passphrase, salt=salt, n=n, r=r, p=p, dklen=KEY_SIZE,
                          maxmem=128 * r * n * p + 128 * r * n + (1 << 20))


def encrypt(plaintext: bytes, passphrase: bytes, n: int = WRITE_N) -> bytes:
    """go-securesystemslib's encrypted.Encrypt (with scrypt parameters n, 8, 1):
    the JSON envelope, its fields in Go's order, compact as json.Marshal writes."""
    require()
    import json
    from nacl.secret import SecretBox
    salt, nonce = os.urandom(SALT_SIZE), os.urandom(NONCE_SIZE)
    key = derive(passphrase, salt, n, SCRYPT_R, SCRYPT_P)
    sealed = SecretBox(key).encrypt(plaintext, nonce).ciphertext   # tag || data, as Go's Seal
    envelope = {"kdf": {"name": "scrypt", "params": {"N": n, "r": SCRYPT_R, "p": SCRYPT_P},
                        "salt": b64(salt)},
                "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)},
                "ciphertext": b64(sealed)}
    return json.dumps(envelope, separators=(",", ":")).encode("ascii")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def field(obj: object, key: str, kind: type, what: str) -> object:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise KeyUnreadable(f"{what}: its encrypted envelope lacks a valid {key!r}")
    return value


def dict_field(obj: object, key: str, what: str) -> dict:
    value = field(obj, key, dict, what)
    assert isinstance(value, dict)
    return value


def int_field(obj: object, key: str, what: str) -> int:
    value = field(obj, key, int, what)
    assert isinstance(value, int)
    return value


def b64_field(obj: object, key: str, what: str) -> bytes:
    value = field(obj, key, str, what)
    assert isinstance(value, str)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyUnreadable(f"{what}: {key!r} in its encrypted envelope is not base64") from None


def decrypt(envelope: bytes, passphrase: bytes, what: str) -> bytes:
    """go-securesystemslib's encrypted.Decrypt: checks the names and the scrypt
    parameters first, then derives the key and opens the box."""
    import json
    try:
        data = json.loads(envelope)
    except (ValueError, RecursionError):
        raise KeyUnreadable(f"{what}: its encrypted envelope is not JSON") from None
    kdf = dict_field(data, "kdf", what)
    cipher = dict_field(data, "cipher", what)
    if kdf.get("name") != "scrypt":
        raise KeyUnreadable(f"{what}: unknown key derivation {kdf.get('name')!r}")
    if cipher.get("name") != "nacl/secretbox":
        raise KeyUnreadable(f"{what}: unknown cipher {cipher.get('name')!r}")
    params = dict_field(kdf, "params", what)
    n, r, p = (int_field(params, k, what) for k in ("N", "r", "p"))
    if n not in SCRYPT_N or (r, p) != (SCRYPT_R, SCRYPT_P):
        raise KeyUnreadable(f"{what}: unsupported scrypt parameters N={n} r={r} p={p}",
                            hint="cosign and skopeo write N=32768, 65536 or 131072 with r=8 p=1")
    salt = b64_field(kdf, "salt", what)
    nonce = b64_field(cipher, "nonce", what)
    sealed = b64_field(data, "ciphertext", what)
    if len(nonce) != NONCE_SIZE:
        raise KeyUnreadable(f"{what}: its nonce is {len(nonce)} bytes, not {NONCE_SIZE}")
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox
    key = derive(passphrase, salt, n, r, p)
    try:
        return SecretBox(key).decrypt(sealed, nonce)
    except CryptoError:
        raise WrongPassphrase(f"cannot decrypt {what}: wrong passphrase (or a damaged file)",
                              hint="give the passphrase the key was made with") from None


# --- keys --------------------------------------------------------------------------
def generate(passphrase: bytes) -> tuple[bytes, bytes]:
    """A new ECDSA P-256 key pair: (private PEM, public PEM), the private one
    ENCRYPTED COSIGN PRIVATE KEY with scrypt N=32768 r=8 p=1 (skopeo 1.9 and
    every cosign read it)."""
    require()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    private = pem_encode(COSIGN_LABEL, encrypt(pkcs8, passphrase))
    return private, public_pem(key.public_key())


def public_pem(public_key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return public_key.public_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(pem: bytes, passphrase: bytes, what: str = "the private key") -> object:
    """The signing key of an encrypted cosign key file (ECDSA, RSA or Ed25519,
    as containers/image accepts); WrongPassphrase when it does not decrypt,
    KeyUnreadable for anything else wrong.  `what` names the file in messages."""
    require()
    if len(pem) > MAX_KEY_FILE:
        raise KeyUnreadable(f"{what} is larger than a key file can be")
    _, envelope = pem_decode(pem, PRIVATE_LABELS, what)
    pkcs8 = decrypt(envelope, passphrase, what)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    try:
        key = serialization.load_der_private_key(pkcs8, password=None)
    except (ValueError, TypeError):
        raise KeyUnreadable(f"{what}: what it holds is not a PKCS#8 private key") from None
    except Exception as e:   # cryptography's UnsupportedAlgorithm: not a ValueError
        raise KeyUnreadable(f"{what}: unsupported private key ({type(e).__name__})") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey,
                            ed25519.Ed25519PrivateKey)):
        raise KeyUnreadable(f"{what}: a {type(key).__name__}, not an ECDSA, RSA or Ed25519 key")
    return key


def load_public(pem: bytes | str, what: str = "the public key") -> object:
    """A public key from PEM (PKIX ``PUBLIC KEY``, or PKCS#1 ``RSA PUBLIC KEY``),
    as sigstore's cryptoutils.UnmarshalPEMToPublicKey reads it."""
    require(nacl=False)
    if isinstance(pem, str):
        pem = pem.encode("utf-8", "replace")
    if len(pem) > MAX_KEY_FILE:
        raise KeyUnreadable(f"{what} is larger than a key file can be")
    label, der = pem_decode(pem, PUBLIC_LABELS, what)
    from stacko.signing import publickey       # not cryptography's serialization: see there
    try:
        return publickey.from_pkcs1(der) if label == "RSA PUBLIC KEY" \
            else publickey.from_spki(der)
    except publickey.BadKey as e:
        raise KeyUnreadable(f"{what} is not a valid ECDSA, RSA or Ed25519 public key ({e})"
                            ) from None


# --- files -------------------------------------------------------------------------
def read_passphrase_file(path: str) -> bytes:
    """The first line of path, without its newline, as containers/image's
    cli.ReadPassphraseFile (and gpg) read it."""
    try:
        with open(path, "rb") as f:
            line = f.readline(MAX_KEY_FILE + 1)
    except OSError as e:
        raise StackoError(f"cannot read the passphrase file {quote(path)}: {e.strerror}") from None
    if len(line) > MAX_KEY_FILE:
        raise StackoError(f"the passphrase file {quote(path)} has a first line longer than "
                          f"{MAX_KEY_FILE >> 10} KiB")
    return line[:-1] if line.endswith(b"\n") else line


def read_key_file(path: str, what: str | None = None) -> bytes:
    """A key file's bytes, bounded (a FIFO or /dev/zero is not read forever).
    what names it in messages (default: "the key file PATH")."""
    what = what or f"the key file {quote(path)}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise KeyUnreadable(f"cannot read {what}: {e.strerror}") from None
    try:
        import stat
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KeyUnreadable(f"{what} is not a regular file")
        data = os.read(fd, MAX_KEY_FILE + 1)
        while data and len(data) <= MAX_KEY_FILE:
            more = os.read(fd, MAX_KEY_FILE + 1 - len(data))
            if not more:
                break
            data += more
    except OSError as e:
        raise KeyUnreadable(f"cannot read {what}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE:
        raise KeyUnreadable(f"{what} is larger than a key file can be")
    return data

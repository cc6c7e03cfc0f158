"""GnuPG "simple signing": gpg, run through stacko.run, both ways.

Checking: the policy's keys go into a temporary home directory of their own
(as keyrings, else imported: Keyring), so no key of the user's keyring can
vouch for an image, and a signature counts only when gpg reports, on its
--status-fd, exactly one ``VALIDSIG`` whose primary key is one of them.  gpg's output is
bounded (--max-output), as a signed message can be a compression bomb.

Signing: with the user's own keyring, as skopeo --sign-by does; a passphrase
goes to gpg in a file readable only by us (--passphrase-file), never in argv.
"""
from __future__ import annotations

import os

from stacko import run
from stacko.errors import CommandFailed, StackoError

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable

MAX_SIGNED = 4 << 20         # bytes of a payload gpg may write out (containers/image's limit)
BASE = ["gpg", "--batch", "--no-tty", "--no-autostart", "--no-options",
        "--no-permission-warning", "--status-fd", "1"]
# gpgv has no --max-output: the file it writes the signed data to is bounded by
# RLIMIT_FSIZE instead (a write past it kills gpgv with SIGXFSZ).
GPGV = ["prlimit", f"--fsize={MAX_SIGNED + 1}", "gpgv", "--status-fd", "1"]


class BadSignature(Exception):
    def __init__(self, detail: str, unknown_key: bool = False) -> None:
        super().__init__(detail)
        self.detail, self.unknown_key = detail, unknown_key


class SigningFailed(StackoError):
    pass


def status_lines(stdout: str) -> list[list[str]]:
    return [line.split()[1:] for line in stdout.splitlines()
            if line.startswith("[GNUPG:] ") and len(line.split()) > 1]


def private_dir(prefix: str) -> str:
    """A new directory of mode 0700 in $TMPDIR (/tmp), as tempfile.mkdtemp
    makes one, without importing tempfile, which brings shutil and random
    (~3 ms of every signed pull, docs/startup.md)."""
    base = os.environ.get("TMPDIR") or "/tmp"
    for _ in range(100):
        path = os.path.join(base, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name for a directory {prefix}* in {base}")


def remove_private_dir(path: str) -> None:
    """What gpg leaves in a home of ours (pubring.kbx, trustdb.gpg and the files
    written there) is a few files, removed in-process (state.remove_flat).
    Never fails: a temporary directory left behind is no reason to fail a
    pull."""
    from stacko.state import remove_flat
    try:
        remove_flat(path)
    except (OSError, StackoError):
        pass


ARMOR_BEGIN = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
ARMOR_END = b"-----END PGP PUBLIC KEY BLOCK-----"


def keyring_bytes(key: bytes) -> bytes | None:
    """A key file's OpenPGP packets, for gpg to read as a keyring: binary as
    it is, armoured (RFC 4880, 6.2) decoded.  None when it is neither, or its
    armour is not plainly good (a checksum that does not match): gpg --import
    then decides (Keyring.verify)."""
    if key[:1] and key[0] & 0x80:
        return key
    import binascii
    out = []
    lines = iter(key.splitlines())
    for line in lines:
        if line.strip() != ARMOR_BEGIN:
            continue
        body, crc = [], None
        for line in lines:
            line = line.strip()
            if line == ARMOR_END:
                break
            if b": " in line and not body:
                continue                       # an armour header (Version: ...)
            if line.startswith(b"=") and len(line) == 5:
                crc = line[1:]
            elif line:
                body.append(line)
        else:
            return None                        # no end line
        try:
            data = binascii.a2b_base64(b"".join(body))
            if crc is not None and binascii.a2b_base64(crc) != crc24(data):
                return None
        except binascii.Error:
            return None
        out.append(data)
    return b"".join(out) if out and all(out) else None


def crc24(data: bytes) -> bytes:
    """The armour's checksum (RFC 4880, 6.1)."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return (crc & 0xFFFFFF).to_bytes(3, "big")


class Keyring:
    """A temporary GnuPG home holding only the given public keys.

    A signature is first checked by gpgv with the key files as its keyrings
    (armoured ones decoded here): no import, one short run per signature.
    One that is not good that way is checked again the way it always was, by
    gpg after ``gpg --import`` of the keys, and that verdict stands: a
    refusal says what it said (a key that does not import, a stranger's
    key), and a key that gpg imports but gpgv does not read is still
    accepted.  Only VALIDSIG counts either way, and only the policy's keys
    are in this home."""

    def __init__(self, keys: list[bytes], meanwhile: Callable[[], None] | None = None) -> None:
        self.keys = keys
        self.meanwhile = meanwhile      # run once, while the first check runs
        self.home = ""
        self.rings: list[str] = []      # the key files, as keyrings
        self.imported = False
        self.fingerprints: set[str] = set()      # of the keys imported
        self.count = 0

    def __enter__(self) -> "Keyring":
        self.home = private_dir("stacko-gpg-")
        try:
            for n, key in enumerate(self.keys):
                packets = keyring_bytes(key)
                if packets is not None:
                    self.rings.append(self._write(f"ring-{n}", packets))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.home:
            remove_private_dir(self.home)
            self.home = ""

    def _import(self) -> None:
        """gpg --import of the keys into this home; PolicyError when none imports."""
        from stacko.signing.policyfile import PolicyError
        self.imported = True
        paths = [self._write(f"key-{n}", key) for n, key in enumerate(self.keys)]
        if paths:
            # IMPORT_OK names each primary key imported: no listing needed.
            imported = run.run(BASE + ["--homedir", self.home, "--import", *paths],
                               check=False)
            self.fingerprints = {s[2].upper() for s in status_lines(imported.stdout)
                                 if s[0] == "IMPORT_OK" and len(s) > 2}
        if not self.fingerprints:
            raise PolicyError("no GnuPG public key could be imported from the keys the "
                              "trust policy names",
                              hint="keyPath, keyPaths and keyData must hold OpenPGP "
                                   "public keys (gpg --export, binary or armoured)")

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.home, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb") as f:
            f.write(data)
        return path

    def verify(self, blob: bytes) -> tuple[str, bytes]:
        """(the signer's primary key fingerprint, the signed data) of an OpenPGP
        signed message; BadSignature when it is not a good one by these keys."""
        if not self.imported and self.rings:
            rings = []
            for path in self.rings:
                rings += ["--keyring", path]
            try:
                return self._verify(blob, GPGV + ["--homedir", self.home, *rings])
            except (BadSignature, CommandFailed):    # CommandFailed: no gpgv, no prlimit
                pass                     # judged again below, as it always was
        if not self.imported:
            self._import()
        return self._verify(blob, BASE + ["--homedir", self.home, "--trust-model", "always",
                                          "--max-output", str(MAX_SIGNED), "--decrypt"])

    def _verify(self, blob: bytes, argv: list[str]) -> tuple[str, bytes]:
        self.count += 1
        sig = self._write(f"sig-{self.count}", blob)
        out = os.path.join(self.home, f"out-{self.count}")
        child = run.spawn(argv + ["--output", out, sig])
        try:
            if self.meanwhile is not None:
                work, self.meanwhile = self.meanwhile, None
                work()
        finally:
            result = child.wait()
        try:
            with open(out, "rb") as f:
                data = f.read(MAX_SIGNED + 1)
        except FileNotFoundError:
            data = b""
        finally:
            for path in (sig, out):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        status = status_lines(result.stdout)
        words = [s[0] for s in status]
        valid = [s for s in status if s[0] == "VALIDSIG"]
        # ERRSIG says gpg could not check a signature, and why (its 7th field):
        # 9 is "no public key", then NO_PUBKEY follows and the signer is not one
        # of the policy's keys (only they are in this home).  Any other reason
        # (a bad MPI, an unknown digest algorithm, a time conflict) comes with
        # the issuer's key id, often one of the policy's keys: a damaged
        # signature, not a stranger's.
        errsig = [s for s in status if s[0] == "ERRSIG"]
        unchecked = [s for s in errsig if len(s) < 7 or s[6] != "9"]
        if "NO_PUBKEY" in words and not valid and "BADSIG" not in words and not unchecked:
            return self._raise_unknown(status)
        if "BADSIG" in words or errsig:
            raise BadSignature("the signature does not verify (tampered or corrupt)"
                               if "BADSIG" in words or not unchecked else
                               "gpg cannot check the signature (tampered, corrupt, or made "
                               "with an algorithm it does not support)")
        if len(valid) != 1 or words.count("NEWSIG") > 1 or words.count("GOODSIG") != 1:
            raise BadSignature("not a signed message with exactly one good signature"
                               if valid or "NEWSIG" in words else
                               "not an OpenPGP signed message")
        if result.returncode != 0 or len(data) > MAX_SIGNED:
            raise BadSignature("gpg could not verify it (exit status "
                               f"{result.returncode})")
        fields = valid[0]
        primary = (fields[10] if len(fields) > 10 else fields[1]).upper()
        if self.imported and primary not in self.fingerprints:
            raise BadSignature(f"signed by key {primary}, not one the policy names",
                               unknown_key=True)
        return primary, data

    def _raise_unknown(self, status: list) -> tuple[str, bytes]:
        key = next((s[1] for s in status if s[0] == "NO_PUBKEY" and len(s) > 1), "?")
        raise BadSignature(f"signed by key {key}, which is not one of the policy's",
                           unknown_key=True)


def read_passphrase(path: str) -> bytes:
    """The passphrase in a --sign-passphrase-file: its first line."""
    from stacko.signing.files import read_regular
    try:
        data = read_regular(path, 64 * 1024)
    except OSError as e:
        raise SigningFailed(f"cannot read the passphrase file {path}: {e.strerror or e}") \
            from None
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if len(data) > 64 * 1024 or not line:
        raise SigningFailed(f"the passphrase file {path} holds no passphrase on its first line")
    return line


def _signing_argv(home: str, fingerprint: str, passphrase: bytes | None) -> list[str]:
    argv = ["gpg", "--batch", "--no-tty", "--status-fd", "1", "--local-user", fingerprint]
    if passphrase is not None:
        path = os.path.join(home, "passphrase")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb") as f:
            f.write(passphrase + b"\n")
        argv += ["--pinentry-mode", "loopback", "--passphrase-file", path]
    return argv


def check_secret_key(fingerprint: str) -> None:
    """The key exists in the user's keyring, with its secret part."""
    result = run.run(["gpg", "--batch", "--no-tty", "--with-colons", "--list-secret-keys",
                      "--", fingerprint], check=False)
    if result.returncode != 0 or not any(line.startswith("sec:")
                                         for line in result.stdout.splitlines()):
        raise SigningFailed(f"no GnuPG secret key {fingerprint!r} in the keyring "
                            f"({os.environ.get('GNUPGHOME') or '~/.gnupg'})",
                            hint="give --sign-by the fingerprint of a key that "
                                 "`gpg --list-secret-keys` shows; nothing was uploaded")


def sign(data: bytes, fingerprint: str, passphrase: bytes | None) -> bytes:
    """A binary OpenPGP signed message of data, by the user's key fingerprint."""
    work = private_dir("stacko-sign-")
    try:
        source = os.path.join(work, "payload")
        with open(source, "wb") as f:
            f.write(data)
        out = os.path.join(work, "signature")
        argv = _signing_argv(work, fingerprint, passphrase)
        result = run.run(argv + ["--output", out, "--sign", source], check=False)
        created = [s for s in status_lines(result.stdout) if s[0] == "SIG_CREATED"]
        if result.returncode != 0 or not created or not os.path.exists(out):
            words = {s[0] for s in status_lines(result.stdout)}
            why = "a wrong passphrase" if words & {"BAD_PASSPHRASE", "MISSING_PASSPHRASE"} \
                or "Bad passphrase" in result.stderr else "an error"
            detail = result.stderr.strip().splitlines()[-1:] if result.stderr.strip() else []
            raise SigningFailed(f"gpg could not sign with key {fingerprint} ({why}"
                                + (f": {detail[0]}" if detail else "") + ")",
                                hint="check the key and --sign-passphrase-file")
        with open(out, "rb") as f:
            return f.read()
    finally:
        remove_private_dir(work)

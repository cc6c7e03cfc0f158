"""GnuPG "simple signing": gpg, run through stacko.run, both ways.

Checking: the policy's keys are imported into a temporary home directory of
their own, so no key of the user's keyring can vouch for an image, and a
signature counts only when gpg reports, on its --status-fd, exactly one
``VALIDSIG`` whose primary key is one of those imported.  gpg's output is
bounded (--max-output), as a signed message can be a compression bomb.

Signing: with the user's own keyring, as skopeo --sign-by does; a passphrase
goes to gpg in a file readable only by us (--passphrase-file), never in argv.
"""
from __future__ import annotations

import os

from stacko import run
from stacko.errors import StackoError

MAX_SIGNED = 4 << 20         # bytes of a payload gpg may write out (containers/image's limit)
BASE = ["gpg", "--batch", "--no-tty", "--no-autostart", "--no-options",
        "--no-permission-warning", "--status-fd", "1"]


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


class Ahead:
    """Keyrings built on another thread while a pull fetches the manifest
    (pullsign.warm_up_gpg), taken by the check once its signatures are read:
    importing the keys (a gpg run, ~5 ms) is then off the pull's path.  A
    keyring that failed to build is not kept: the check builds it again and
    reports why.  close() removes what was built and not taken."""

    def __init__(self) -> None:
        from stacko.lean import allocate_lock
        self.done = allocate_lock()
        self.done.acquire()            # released once build() has returned
        self.rings: dict[tuple[bytes, ...], Keyring] = {}

    def build(self, key_sets: list[list[bytes]]) -> None:
        try:
            for keys in key_sets:
                ring = Keyring(keys)
                try:
                    ring.__enter__()
                except BaseException:   # noqa: BLE001  met again, and reported, by the check
                    continue
                self.rings[tuple(keys)] = ring
        finally:
            self.done.release()

    def take(self, keys: list[bytes]) -> Keyring | None:
        with self.done:              # built (a gpg run at most) before anything is taken
            return self.rings.pop(tuple(keys), None)

    def close(self) -> None:
        with self.done:
            rings, self.rings = list(self.rings.values()), {}
        for ring in rings:
            ring.close()


class Keyring:
    """A temporary GnuPG home holding only the given public keys."""

    def __init__(self, keys: list[bytes]) -> None:
        self.keys = keys
        self.home = ""
        self.fingerprints: set[str] = set()
        self.count = 0

    def __enter__(self) -> "Keyring":
        from stacko.signing.policyfile import PolicyError
        if self.home:          # built already (Ahead): entered once
            return self
        self.home = private_dir("stacko-gpg-")
        try:
            paths = []
            for n, key in enumerate(self.keys):
                paths.append(self._write(f"key-{n}", key))
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

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.home, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb") as f:
            f.write(data)
        return path

    def verify(self, blob: bytes) -> tuple[str, bytes]:
        """(the signer's primary key fingerprint, the signed data) of an OpenPGP
        signed message; BadSignature when it is not a good one by these keys."""
        self.count += 1
        sig = self._write(f"sig-{self.count}", blob)
        out = os.path.join(self.home, f"out-{self.count}")
        result = run.run(BASE + ["--homedir", self.home, "--trust-model", "always",
                                 "--max-output", str(MAX_SIGNED), "--output", out,
                                 "--decrypt", sig], check=False)
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
        primary = fields[10] if len(fields) > 10 else fields[1]
        if primary.upper() not in self.fingerprints:
            raise BadSignature(f"signed by key {primary}, not one the policy names",
                               unknown_key=True)
        return primary.upper(), data

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

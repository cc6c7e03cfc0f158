"""push-image's signing: everything that can fail is tried before the first
upload (the GnuPG key exists and signs, the sigstore key decrypts, the staging
lookaside is writable), then, once the manifest is pushed, its signature is
made, stored and read back.

GnuPG (--sign-by): a simple-signing signature in the lookaside-staging
location that registries.d names for REF, as skopeo copy --sign-by writes it.
Sigstore (--sign-by-sigstore-private-key): the ``sha256-<hex>.sig`` attachment
(stacko/signing/sigstore.py, cosignkey.py).  The signed identity is REF, or
--sign-identity.
"""
from __future__ import annotations

import os

from stacko.log import debug
from stacko.errors import StackoError, UsageError
from stacko.signing import payload as payload_mod
from stacko.signing.dockerref import BadReference, Named, parse_normalized


class SignatureNotStored(StackoError):
    pass


def _identity(text: str, what: str) -> Named:
    try:
        ref = parse_normalized(text[len("docker://"):] if text.startswith("docker://")
                               else text)
    except BadReference as e:
        raise UsageError(f"{what} {text!r} is not a docker reference: {e}") from None
    if ref.name_only and what == "REF":
        return ref._replace(tag="latest")        # as push-image pushes it
    if ref.name_only:
        raise UsageError(f"{what} {text!r} names neither a tag nor a digest")
    return ref


def _passphrase(path: str | None) -> bytes | None:
    if path is None:
        return None
    from stacko.signing import gpg
    return gpg.read_passphrase(path)


class Signer:
    def __init__(self, ref_text: str, sign_by: str | None, sigstore_key: str | None,
                 passphrase_file: str | None, sign_identity: str | None,
                 registries_d: str | None) -> None:
        if not sign_by and not sigstore_key:
            given = [o for o, v in (("--sign-passphrase-file", passphrase_file),
                                    ("--sign-identity", sign_identity)) if v]
            verb = "needs" if len(given) == 1 else "need"
            raise UsageError(f"{' and '.join(given)} {verb} --sign-by or "
                             "--sign-by-sigstore-private-key")
        self.ref = _identity(ref_text, "REF")
        self.identity = str(_identity(sign_identity, "--sign-identity")) if sign_identity \
            else str(self.ref)
        self.sign_by = sign_by
        self.passphrase = _passphrase(passphrase_file)
        self.staging = ""
        self.sigstore_key = None
        if sign_by:
            self._prepare_gpg(registries_d)
        if sigstore_key:
            self._prepare_sigstore(sigstore_key)

    def _prepare_gpg(self, registries_d: str | None) -> None:
        from stacko.signing import gpg, registriesd
        config = registriesd.load(registries_d if registries_d is not None
                                  else registriesd.DEFAULT_DIR)
        self.staging = registriesd.lookaside_base(config, self.ref, write=True)
        if not self.staging.startswith("file://"):
            raise StackoError(f"the lookaside for {self.ref} is {self.staging}; stacko writes "
                             "GnuPG signatures only to a file:// location",
                             hint="set lookaside-staging to a file:// URL in registries.d")
        gpg.check_secret_key(self.sign_by)
        # A trial signature: a wrong passphrase is found before anything is uploaded.
        gpg.sign(b"stacko: a trial signature, before pushing", self.sign_by, self.passphrase)

    def _prepare_sigstore(self, path: str) -> None:
        from stacko.signing import cosignkey
        pem = cosignkey.read_key_file(path, f"the sigstore private key {path}")
        passphrase = self.passphrase
        if passphrase is None:
            import getpass
            if not os.isatty(0):
                raise UsageError("the sigstore private key needs its passphrase: give "
                                 "--sign-passphrase-file FILE (no terminal to ask on)")
            passphrase = getpass.getpass(f"Passphrase for {path}: ").encode()
        self.sigstore_key = cosignkey.load_private(pem, passphrase, what=path)

    def finish(self, client: object, repository: str, digest: str) -> None:
        """Sign the pushed manifest digest, store the signature and read it back."""
        if self.sign_by:
            self._finish_gpg(digest)
        if self.sigstore_key is not None:
            self._finish_sigstore(client, repository, digest)

    def _finish_gpg(self, digest: str) -> None:
        from stacko.signing import gpg, lookaside
        data = payload_mod.make(self.identity, digest, payload_mod.GPG)
        blob = gpg.sign(data, self.sign_by, self.passphrase)
        url = lookaside.write(self.staging, self.ref.path, digest, blob)
        if blob not in lookaside.read(self.staging, self.ref.path, digest):
            raise SignatureNotStored(f"the GnuPG signature written to {url} is not there "
                                     "when read back")
        debug(f"stacko: signed {digest} as {self.identity} with GnuPG key {self.sign_by}: "
              f"{url}")

    def _finish_sigstore(self, client: object, repository: str, digest: str) -> None:
        from stacko.signing import sigstore
        data = payload_mod.make(self.identity, digest, payload_mod.SIGSTORE)
        signature = sigstore.sign(data, self.sigstore_key)
        sigstore.attach(client, repository, digest, data, signature)
        if (data, signature) not in [(bytes(p), s) for p, s in
                                     sigstore.fetch_signatures(client, repository, digest)]:
            raise SignatureNotStored(f"the sigstore signature of {digest} is not in its "
                                     ".sig attachment when read back")
        debug(f"stacko: signed {digest} as {self.identity} with a sigstore key")

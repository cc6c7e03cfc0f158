"""Evaluating the trust policy for one image (containers/image's IsRunningImageAllowed).

``evaluate(policy, ref, manifest_digest, source)`` finds the requirements of
the most specific scope for REF and checks each; signatures are asked of
``source`` only when a requirement needs them (``source.gpg()``: binary
OpenPGP messages from the lookaside; ``source.sigstore()``: (payload, base64
signature) pairs from the ``.sig`` attachment).  A signature is accepted when
it is by one of the requirement's keys, is a valid payload, names this manifest
and an identity that signedIdentity accepts, checked in that order as
containers/image does.  A refusal raises PolicyRefused saying which reason.
"""
from __future__ import annotations

import hashlib

from stacko.errors import StackoError
from stacko.records import record
from stacko.signing.dockerref import Named, parse_normalized
from stacko.signing.identity import matches
from stacko.signing.policyfile import (ACCEPT, REJECT, SIGNED_BY, Policy, PolicyError,
                                       Requirement, read_keys, requirements_for)

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable

    from stacko.signing import payload as payload_mod


def b64encode(data: bytes) -> bytes:
    import base64       # here: loaded while gpgv works (_check_gpg), not before
    return base64.b64encode(data)


def b64decode(text: str | bytes) -> bytes:
    import base64
    return base64.b64decode(text)

# Why a signature, or an image, was refused: the words the messages start with.
NO_SIGNATURE = "no signature"
NO_KEY = "no key matched"
IDENTITY = "identity not accepted"
OTHER_MANIFEST = "signature for another manifest"
BAD = "bad signature"
REJECTED = "rejected by the policy"


class PolicyRefused(StackoError):
    def __init__(self, message: str, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.reason = reason


class SignatureRejected(Exception):
    """One signature is not good for a requirement."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@record
class Accepted:
    """A signature a requirement accepted, as kept with the image."""
    kind: str                 # "gpg" or "sigstore"
    signer: str               # the key's fingerprint (GnuPG) or sha256 of its DER (sigstore)
    identity: str             # the docker reference it signs
    digest: str               # the manifest digest it signs
    data: bytes               # the OpenPGP message, or the sigstore payload
    signature: str = ""       # sigstore: the base64 signature

    def to_dict(self) -> dict:
        out = {"type": self.kind, "signer": self.signer, "identity": self.identity,
               "digest": self.digest, "data": b64encode(self.data).decode()}
        if self.signature:
            out["signature"] = self.signature
        return out

    @classmethod
    def from_dict(cls, d: object) -> "Accepted":
        if not isinstance(d, dict) or d.get("type") not in ("gpg", "sigstore") or \
                not all(isinstance(d.get(k), str) for k in ("signer", "identity", "digest",
                                                            "data")):
            raise ValueError("not a kept signature")
        return cls(d["type"], d["signer"], d["identity"], d["digest"],
                   b64decode(d["data"]), str(d.get("signature") or ""))


@record
class Verdict:
    scope: str
    accepted: tuple           # Accepted, one per signature requirement


class StoredSource:
    """Signatures kept with an image, for an offline re-check."""

    def __init__(self, kept: list) -> None:
        self.kept = kept

    def gpg(self) -> list:
        return [a.data for a in self.kept if a.kind == "gpg"]

    def sigstore(self) -> list:
        return [(a.data, a.signature) for a in self.kept if a.kind == "sigstore"]


def intended_reference(ref_text: str) -> Named:
    """The reference an image was asked for, as the policy sees it."""
    text = ref_text[len("docker://"):] if ref_text.startswith("docker://") else ref_text
    try:
        return parse_normalized(text)
    except ValueError as e:
        raise PolicyError(f"{ref_text!r} cannot be checked by the trust policy: {e}") from None


def evaluate(policy: Policy, ref: Named | str, manifest_digest: str, source: object,
             manifest: bytes | None = None,
             meanwhile: Callable[[], None] | None = None) -> Verdict:
    """The verdict for the image REF whose manifest has manifest_digest; raises
    PolicyRefused (or PolicyError when a key cannot be read).  meanwhile, when
    given, runs once while gpg checks a signature, if one is checked."""
    if isinstance(ref, str):
        ref = intended_reference(ref)
    scope, reqs = requirements_for(policy, ref)
    where = f"{policy.path}, {scope}"
    accepted = []
    for req in reqs:
        if req.type == ACCEPT:
            continue
        if req.type == REJECT:
            raise PolicyRefused(f"the trust policy rejects {ref} ({where}: reject)", REJECTED,
                                hint="the policy allows no image from there")
        keys = read_keys(req)           # before anything is fetched: a missing key is an error
        if req.type == SIGNED_BY:
            found = _check_gpg(req, keys, ref, manifest_digest, manifest, source.gpg(),
                               meanwhile)
            meanwhile = None
        else:
            found = _check_sigstore(req, keys, ref, manifest_digest, manifest,
                                    source.sigstore())
        if isinstance(found, Accepted):
            accepted.append(found)
            continue
        raise _refusal(found, ref, manifest_digest, where, req)
    return Verdict(scope, tuple(accepted))


def _refusal(rejections: list, ref: Named, digest: str, where: str,
             req: Requirement) -> PolicyRefused:
    what = "GnuPG" if req.type == SIGNED_BY else "sigstore"
    if not rejections:
        return PolicyRefused(
            f"the trust policy refuses {ref}: {NO_SIGNATURE}: a {what} signature is required "
            f"({where}: {req.describe()}) but manifest {digest} has none", NO_SIGNATURE,
            hint="nothing was fetched or recorded; sign the image (push-image --sign-by, "
                 "--sign-by-sigstore-private-key) or check --registries.d")
    reasons = [r.reason for r in rejections]
    reason = reasons[0] if len(set(reasons)) == 1 else BAD if BAD in reasons else reasons[0]
    details = "; ".join(f"signature {n}: {r.reason}: {r.detail}"
                        for n, r in enumerate(rejections, start=1))
    which = f"the {what} signature" if len(rejections) == 1 else \
        f"none of the {len(rejections)} {what} signatures"
    verb = "is not" if len(rejections) == 1 else "is"
    return PolicyRefused(f"the trust policy refuses {ref}: {reason}: {which} of manifest "
                         f"{digest} {verb} accepted ({where}: {req.describe()}): {details}",
                         reason, hint="nothing was fetched or recorded")


def _check_payload(req: Requirement, data: bytes, kind: str, ref: Named,
                   digest: str, manifest: bytes | None) -> payload_mod.Payload:
    """The payload of a signature of kind "gpg" or "sigstore" (Accepted.kind)."""
    from stacko.signing import payload as payload_mod
    sig_type = payload_mod.GPG if kind == "gpg" else payload_mod.SIGSTORE
    try:
        signed = payload_mod.parse(data, sig_type)
    except payload_mod.InvalidPayload as e:
        raise SignatureRejected(BAD, e.message) from None
    if not digest_matches(signed.digest, digest, manifest):
        raise SignatureRejected(OTHER_MANIFEST, f"it signs manifest {signed.digest}")
    if not matches(req.identity, ref, signed.reference):
        raise SignatureRejected(IDENTITY, f"it signs identity {signed.reference[:300]!r}, "
                                          f"which {req.identity.describe()} does not accept "
                                          f"for {ref}")
    return signed


def digest_matches(signed: str, digest: str, manifest: bytes | None) -> bool:
    if signed == digest:
        return True
    algorithm = signed.partition(":")[0]
    if manifest is None or algorithm == digest.partition(":")[0] \
            or algorithm not in ("sha384", "sha512"):
        return False
    return f"{algorithm}:{hashlib.new(algorithm, manifest).hexdigest()}" == signed


def _check_gpg(req: Requirement, keys: list, ref: Named, digest: str,
               manifest: bytes | None, signatures: list,
               meanwhile: Callable[[], None] | None = None) -> object:
    from stacko.signing import gpg
    rejections: list = []
    if not signatures:      # refused whatever the keys hold: no gpg started, a fast refusal
        return rejections
    def loading() -> None:
        """What follows gpg's verdict (the payload's parser, base64 for the
        record), and the caller's meanwhile, loaded while gpg works."""
        import base64  # noqa: F401
        from stacko.signing import payload  # noqa: F401
        if meanwhile is not None:
            meanwhile()
    with gpg.Keyring(keys, loading) as ring:
        for blob in signatures:
            try:
                fingerprint, data = ring.verify(blob)
                signed = _check_payload(req, data, "gpg", ref, digest, manifest)
            except gpg.BadSignature as e:
                rejections.append(SignatureRejected(NO_KEY if e.unknown_key else BAD, e.detail))
                continue
            except SignatureRejected as e:
                rejections.append(e)
                continue
            return Accepted("gpg", fingerprint, signed.reference, signed.digest, blob)
    return rejections


def key_id(pem: bytes) -> str:
    """sha256 of a PEM public key's DER: how a sigstore signer is named."""
    lines = [x for x in pem.decode("ascii", "replace").splitlines()
             if x.strip() and not x.startswith("-----")]
    try:
        return "sha256:" + hashlib.sha256(b64decode("".join(lines))).hexdigest()
    except ValueError:
        return "sha256:" + hashlib.sha256(pem).hexdigest()


def _check_sigstore(req: Requirement, keys: list, ref: Named, digest: str,
                    manifest: bytes | None, signatures: list) -> object:
    from stacko.signing import sigstore
    rejections = []
    for data, signature in signatures:
        signer = next((k for k in keys if sigstore.verify(data, signature, [k])), None)
        if signer is None:
            rejections.append(SignatureRejected(NO_KEY, "it is not a valid signature by "
                                                        "any of the policy's keys"))
            continue
        try:
            signed = _check_payload(req, data, "sigstore", ref, digest, manifest)
        except SignatureRejected as e:
            rejections.append(e)
            continue
        return Accepted("sigstore", key_id(signer), signed.reference, signed.digest, data,
                        signature)
    return rejections

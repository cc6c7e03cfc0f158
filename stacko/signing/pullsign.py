"""pull-image's trust check: the policy, evaluated for the manifest it will
install before any of its blobs is fetched, and the record kept with the image.

Defaults as skopeo's: without --policy, ~/.config/containers/policy.json when
it exists, else /etc/containers/policy.json; with neither, no check at all
(as before signatures existed).  Without --registries.d, /etc/containers/registries.d.
"""
from __future__ import annotations

import hashlib
import json
import os

from stacko.log import debug
from stacko.errors import StackoError
from stacko.signing import policy as policy_mod
from stacko.signing import policyfile
from stacko.signing.dockerref import Named

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable

USER_POLICY = ".config/containers/policy.json"
RECORD_VERSION = 1


def default_policy_path() -> str | None:
    user = os.path.join(os.path.expanduser("~"), USER_POLICY)
    for path in (user, policyfile.DEFAULT_PATH):
        if os.path.exists(path):
            return path
    return None


class PullSource:
    """The signatures of one manifest, fetched only when a requirement asks."""

    def __init__(self, ref: Named, digest: str, client: object, repository: str,
                 registries_d: str, config: object = None) -> None:
        self.ref, self.digest, self.client, self.repository = ref, digest, client, repository
        self.registries_d = registries_d
        self.config = config      # registries.d, read already (Checker.prepare), or None
        self._gpg: list | None = None
        self._sigstore: list | None = None

    def gpg(self) -> list:
        if self._gpg is None:
            from stacko.signing import lookaside, registriesd
            config = self.config or registriesd.load(self.registries_d)
            base = registriesd.lookaside_base(config, self.ref)  # type: ignore[arg-type]
            debug(f"stacko: reading GnuPG signatures of {self.digest} from {base}")
            self._gpg = lookaside.read(base, self.ref.path, self.digest)
        return self._gpg

    def sigstore(self) -> list:
        if self._sigstore is None:
            from stacko.signing import sigstore
            self._sigstore = list(sigstore.fetch_signatures(self.client, self.repository,
                                                            self.digest))
        return self._sigstore


class Checker:
    def __init__(self, policy: policyfile.Policy, ref_text: str, registries_d: str) -> None:
        self.policy, self.ref_text = policy, ref_text
        self.ref = policy_mod.intended_reference(ref_text)
        self.registries_d = registries_d
        _, reqs = policyfile.requirements_for(policy, self.ref)
        self.gpg = any(req.type == policyfile.SIGNED_BY for req in reqs)
        self.config: object = None

    def prepare(self) -> None:
        """What a GnuPG check needs before it knows the manifest, done while the
        registry answers the manifest request (Client.manifest's meanwhile):
        the modules (gpg.py, the lookaside reader) and registries.d.  Whatever
        fails here, the check meets again and reports."""
        if not self.gpg:
            return
        try:
            from stacko.signing import gpg, lookaside, registriesd  # noqa: F401
            self.config = registriesd.load(self.registries_d)
        except Exception:  # noqa: BLE001  met again, and reported, by the check
            pass

    def check(self, client: object, repository: str, manifest: bytes,
              digest: str | None = None,
              meanwhile: Callable[[], None] | None = None) -> dict | None:
        """Evaluate the policy for this manifest; raises PolicyRefused.  Returns
        what to keep with the image (None when no signature was needed).
        meanwhile runs once while gpg checks a signature, if one is checked."""
        digest = digest or "sha256:" + hashlib.sha256(manifest).hexdigest()
        source = PullSource(self.ref, digest, client, repository, self.registries_d,
                            self.config)
        verdict = policy_mod.evaluate(self.policy, self.ref, digest, source, manifest,
                                      meanwhile)
        debug(f"stacko: trust policy {self.policy.path}, {verdict.scope}: {self.ref} "
              f"({digest}) accepted" + "".join(f"; signed by {a.kind} key {a.signer}"
                                               for a in verdict.accepted))
        if not verdict.accepted:
            return None
        return {"version": RECORD_VERSION, "reference": str(self.ref), "digest": digest,
                "manifest": policy_mod.b64encode(manifest).decode(),
                "signatures": [a.to_dict() for a in verdict.accepted]}


def checker(ref_text: str, policy_path: str | None,
            registries_d: str | None) -> Checker | None:
    """What pull-image checks REF with; None when no policy file exists at all
    and none was named."""
    path = policy_path if policy_path is not None else default_policy_path()
    if path is None:
        debug("stacko: no trust policy (no --policy, no /etc/containers/policy.json): "
              "any image is accepted")
        return None
    from stacko.signing.registriesd import DEFAULT_DIR
    return Checker(policyfile.load(path), ref_text,
                   registries_d if registries_d is not None else DEFAULT_DIR)


def summary(record: object) -> list:
    """Who signed an image, for list-images --json: [{type, signer, identity}]."""
    if not isinstance(record, dict) or not isinstance(record.get("signatures"), list):
        return []
    return [{k: s.get(k) for k in ("type", "signer", "identity", "digest")}
            for s in record["signatures"] if isinstance(s, dict)]


class KeptRecordError(StackoError):
    pass


def kept(record: object) -> tuple[str, str, bytes, list]:
    """(reference, digest, manifest, signatures) of a record kept with an image."""
    try:
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            raise ValueError("unknown version")
        manifest = policy_mod.b64decode(record["manifest"])
        sigs = [policy_mod.Accepted.from_dict(s) for s in record["signatures"]]
        ref, digest = record["reference"], record["digest"]
        if not isinstance(ref, str) or not isinstance(digest, str):
            raise ValueError("reference or digest")
    except (KeyError, TypeError, ValueError) as e:
        raise KeptRecordError(f"the signatures kept with the image are unreadable ({e})") \
            from None
    return ref, digest, manifest, sigs


def manifest_config_digest(manifest: bytes) -> str | None:
    try:
        doc = json.loads(manifest)
        return doc["config"]["digest"]
    except (ValueError, KeyError, TypeError):
        return None


def recheck(store: object, name: str, policy_path: str) -> tuple[str, str] | None:
    """verify-image --policy: None when the policy accepts image NAME as it was
    pulled, else (reason, message).  Offline: only what was kept is read."""
    from stacko import images as images_mod
    from stacko.signing.dockerref import parse_normalized
    pol = policyfile.load(policy_path)
    with store.locked(exclusive=False):
        images = store.load_images()
        chain = list(reversed(images_mod.stack_of(images, name)))     # bottom first
    image = chain[-1]
    if not image.signed:
        return _unsigned(pol, image)
    try:
        ref_text, digest, manifest, sigs = kept(image.signed)
    except KeptRecordError as e:
        return policy_mod.BAD, e.message
    if not policy_mod.digest_matches(digest, "sha256:" + hashlib.sha256(manifest).hexdigest(),
                                     manifest):
        return policy_mod.BAD, f"the manifest kept with {name!r} does not match its digest"
    layers = _layer_digests(manifest)
    if layers is None or len(layers) != len(chain) or any(
            d not in i.known_digests() for d, i in zip(layers, chain)):
        return (policy_mod.OTHER_MANIFEST, f"the layers of {name!r} are not those of the "
                                           f"signed manifest {digest}")
    try:
        ref = parse_normalized(ref_text)
        policy_mod.evaluate(pol, ref, digest, policy_mod.StoredSource(sigs), manifest)
    except policy_mod.PolicyRefused as e:
        return e.reason, e.message
    except ValueError as e:
        return policy_mod.BAD, f"the reference kept with {name!r} is invalid: {e}"
    return None


def _layer_digests(manifest: bytes) -> list | None:
    try:
        doc = json.loads(manifest)
        return [layer["digest"] for layer in doc["layers"]]
    except (ValueError, KeyError, TypeError):
        return None


def _unsigned(pol: policyfile.Policy, image: object) -> tuple[str, str] | None:
    """An image kept without signatures: accepted only where the policy needs none."""
    from stacko.signing.dockerref import BadReference, parse_normalized, policy_namespaces
    scopes = pol.transports.get("docker") or {}
    reqs = scopes.get("", pol.default)
    for repo in image.repos[:1]:          # where it came from: the namespaces' scopes
        try:
            names = policy_namespaces(parse_normalized(repo))
        except BadReference:
            break
        reqs = next((scopes[n] for n in names if n in scopes), reqs)
    kinds = {r.type for r in reqs}
    if policy_mod.REJECT in kinds:
        return policy_mod.REJECTED, f"the trust policy rejects image {image.name!r}"
    if kinds <= {policy_mod.ACCEPT}:
        return None
    return (policy_mod.NO_SIGNATURE, f"no signature was kept with image {image.name!r} (it "
                                     "was not pulled under a policy that required one)")

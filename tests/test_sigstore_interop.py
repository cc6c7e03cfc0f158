"""Sigstore signatures both ways with skopeo 1.18 (Debian 13, in a chroot; Debian
12's skopeo has sigstore disabled), against a real registry on 127.0.0.1:

- stacko reads the keys skopeo makes (N=65536) and skopeo signs with stacko's;
- what skopeo signs, stacko's checks accept under a sigstoreSigned policy;
- what stacko signs, skopeo accepts under a sigstoreSigned policy, and refuses
  under another key, tampered with, or copied to another repository."""
from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from conftest import run_stacko
from ocigen import d, f, write_layout
from registryd import Registry, available, skopeo_push
from registryfix import registry  # noqa: F401  (the fixture)
from stacko.signing import cosignkey, payload as payload_mod, policy, policyfile, sigstore
from trixiefix import Trixie, trixie, trixie_root  # noqa: F401  (the fixtures)

pytestmark = pytest.mark.skipif(not available(),
                                reason="docker-registry is needed (tests/install-deps.sh)")

PASS = "the fleet's passphrase"
LAYERS = [[d("etc"), f("etc/os-release", b"ID=signed\n")], [f("app", b"app v1\n")]]


# --- helpers -----------------------------------------------------------------------
def manifest_digest(registry: Registry, repo: str, tag: str) -> str:
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return "sha256:" + hashlib.sha256(r.read()).hexdigest()


def client(registry: Registry, repo: str, push: bool = False):
    from stacko.registry.client import Client, Options
    from stacko.registry.ref import parse
    return Client(parse(f"{registry.host}/{repo}:latest"), Options(tls_verify=False), push=push)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def sigstore_policy(trixie: Trixie, scope: str, *keys: Path,
                    identity: Optional[dict] = None) -> Path:
    """A containers-policy.json(5) that accepts scope only when signed by one of keys
    (named as the chroot sees them), and nothing else from docker."""
    requirement: Dict[str, object] = {"type": "sigstoreSigned"}
    if len(keys) == 1:
        requirement["keyPath"] = trixie.path(keys[0])
    else:
        requirement["keyPaths"] = [trixie.path(k) for k in keys]
    if identity is not None:
        requirement["signedIdentity"] = identity
    doc = {"default": [{"type": "reject"}],
           "transports": {"docker": {scope: [requirement]},
                          "oci": {"": [{"type": "insecureAcceptAnything"}]}}}
    name = "policy-" + hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:8] + ".json"
    return write(trixie.work / name, json.dumps(doc))


def registries_d(trixie: Trixie) -> Path:
    """use-sigstore-attachments: containers/image reads and writes .sig tags only then."""
    rd = trixie.work / "registries.d"
    rd.mkdir(exist_ok=True)
    write(rd / "default.yaml", "default-docker:\n  use-sigstore-attachments: true\n")
    return rd


def skopeo_check(trixie: Trixie, policy_file: Path, ref: str, rc: int = 0):
    """skopeo 1.18 copies ref out of the registry under the policy: exit 0 when accepted."""
    out = trixie.work / "out"
    return trixie.skopeo("--policy", trixie.path(policy_file),
                         "--registries.d", trixie.path(registries_d(trixie)),
                         "copy", "--remove-signatures", "--src-tls-verify=false",
                         f"docker://{ref}", f"oci:{trixie.path(out)}:x", rc=rc)


def skopeo_keys(trixie: Trixie, prefix: str, passphrase: str = PASS) -> Path:
    write(trixie.work / f"{prefix}.pass", passphrase + "\n")
    trixie.skopeo("generate-sigstore-key",
                  "--output-prefix", f"{trixie.path(trixie.work)}/{prefix}",
                  "--passphrase-file", trixie.path(trixie.work / f"{prefix}.pass"))
    return trixie.work / prefix


def stacko_keys(trixie: Trixie, prefix: str, passphrase: str = PASS) -> Path:
    write(trixie.work / f"{prefix}.pass", passphrase + "\n")
    run_stacko(None, "generate-sigstore-key", "--output-prefix", str(trixie.work / prefix),
               "--passphrase-file", str(trixie.work / f"{prefix}.pass"))
    return trixie.work / prefix


def stacko_sign(registry: Registry, repo: str, digest: str, identity: str, prefix: Path,
                passphrase: str = PASS) -> tuple:
    """Sign as push-image --sign-by-sigstore-private-key signs, in-process."""
    key = cosignkey.load_private(Path(f"{prefix}.private").read_bytes(), passphrase.encode())
    data = payload_mod.make(identity, digest, payload_mod.SIGSTORE)
    signature = sigstore.sign(data, key)
    sigstore.attach(client(registry, repo, push=True), repo, digest, data, signature)
    return data, signature


class Signatures:
    """A policy.evaluate source for what the registry holds."""

    def __init__(self, registry: Registry, repo: str, digest: str) -> None:
        self.args = client(registry, repo), repo, digest

    def gpg(self) -> List[bytes]:
        return []

    def sigstore(self) -> list:
        return sigstore.fetch_signatures(*self.args)


def stacko_policy(path: Path, scope: str, *keys: Path) -> object:
    doc = {"default": [{"type": "reject"}],
           "transports": {"docker": {scope: [{"type": "sigstoreSigned",
                                              "keyPaths": [str(k) for k in keys]}]}}}
    write(path, json.dumps(doc))
    return policyfile.load(str(path))


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("signed") / "layout"
    write_layout(path, LAYERS, ref="v1")
    return path


# --- keys --------------------------------------------------------------------------
def test_it_is_skopeo_1_18(trixie: Trixie) -> None:
    assert trixie.version().startswith("skopeo version 1.18"), trixie.version()


def test_stacko_reads_skopeo_keys(trixie: Trixie) -> None:
    prefix = skopeo_keys(trixie, "skopeo-key")
    pem = Path(f"{prefix}.private").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----")
    _, body = cosignkey.pem_decode(pem, cosignkey.PRIVATE_LABELS, "k")
    assert json.loads(body)["kdf"]["params"] == {"N": 65536, "r": 8, "p": 1}
    key = cosignkey.load_private(pem, PASS.encode())
    assert cosignkey.public_pem(key.public_key()) == Path(f"{prefix}.pub").read_bytes()
    with pytest.raises(cosignkey.WrongPassphrase):
        cosignkey.load_private(pem, b"not " + PASS.encode())


# --- skopeo signs, stacko checks ------------------------------------------------------
def test_stacko_checks_what_skopeo_signs(trixie: Trixie, registry: Registry,
                                         layout: Path) -> None:
    """skopeo copy --sign-by-sigstore-private-key, with a key skopeo made and with
    one stacko made: stacko finds both signatures and checks them."""
    import shutil
    shutil.copytree(layout, trixie.work / "layout")
    theirs = skopeo_keys(trixie, "theirs")
    ours = stacko_keys(trixie, "ours")
    for prefix in (theirs, ours):
        trixie.skopeo("--insecure-policy", "--registries.d", trixie.path(registries_d(trixie)),
                      "copy", "--dest-tls-verify=false",
                      "--sign-by-sigstore-private-key", trixie.path(Path(f"{prefix}.private")),
                      "--sign-passphrase-file", trixie.path(Path(f"{prefix}.pass")),
                      f"oci:{trixie.path(trixie.work / 'layout')}:v1",
                      f"docker://{registry.host}/by-skopeo:v1")
    digest = manifest_digest(registry, "by-skopeo", "v1")
    found = sigstore.fetch_signatures(client(registry, "by-skopeo"), "by-skopeo", digest)
    assert len(found) == 2
    theirs_pub, ours_pub = (Path(f"{p}.pub").read_bytes() for p in (theirs, ours))
    assert sigstore.verify(*found[0], [theirs_pub]) and not sigstore.verify(*found[0], [ours_pub])
    assert sigstore.verify(*found[1], [ours_pub]) and not sigstore.verify(*found[1], [theirs_pub])
    signed = payload_mod.parse(found[0][0], payload_mod.SIGSTORE)
    assert (signed.reference, signed.digest) == (f"{registry.host}/by-skopeo:v1", digest)

    # The trust policy: either key alone is enough; a third key is refused.
    ref = f"{registry.host}/by-skopeo:v1"
    for keys in ((theirs,), (ours,), (ours, theirs)):
        loaded = stacko_policy(trixie.work / "p.json", f"{registry.host}/by-skopeo",
                               *(Path(f"{k}.pub") for k in keys))
        verdict = policy.evaluate(loaded, ref, digest, Signatures(registry, "by-skopeo", digest))
        assert verdict.accepted[0].kind == "sigstore"
    third = stacko_keys(trixie, "third")
    loaded = stacko_policy(trixie.work / "p.json", f"{registry.host}/by-skopeo",
                           Path(f"{third}.pub"))
    with pytest.raises(policy.PolicyRefused) as e:
        policy.evaluate(loaded, ref, digest, Signatures(registry, "by-skopeo", digest))
    assert e.value.reason == policy.NO_KEY


# --- stacko signs, skopeo checks ------------------------------------------------------
@pytest.fixture
def pushed(registry: Registry, layout: Path, request: pytest.FixtureRequest) -> tuple:
    """An unsigned image in a repository of this test's own: (repo, ref, digest)."""
    repo = "stacko-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:10]
    skopeo_push(registry, f"oci:{layout}:v1", f"{repo}:v1")
    return repo, f"{registry.host}/{repo}:v1", manifest_digest(registry, repo, "v1")


def test_skopeo_accepts_what_stacko_signs(trixie: Trixie, registry: Registry,
                                          pushed: tuple) -> None:
    repo, ref, digest = pushed
    ours, other = stacko_keys(trixie, "ours"), skopeo_keys(trixie, "other")
    scope = f"{registry.host}/{repo}"
    unsigned = skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{ours}.pub")), ref,
                            rc=1)
    assert "no signature exists" in unsigned.stderr

    stacko_sign(registry, repo, digest, ref, ours)
    skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{ours}.pub")), ref)
    skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{other}.pub"),
                                         Path(f"{ours}.pub")), ref)
    refused = skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{other}.pub")), ref,
                           rc=1)
    assert "cryptographic signature verification failed" in refused.stderr
    # By digest, the signed identity (the tag) is of the same repository: accepted.
    skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{ours}.pub")),
                 f"{registry.host}/{repo}@{digest}")
    # A second signature by another key is appended; either key is then enough.
    stacko_sign(registry, repo, digest, ref, other)
    assert len(sigstore.fetch_signatures(client(registry, repo), repo, digest)) == 2
    skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{other}.pub")), ref)
    skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{ours}.pub")), ref)


def test_debian_12s_skopeo_cannot_check_sigstore(trixie: Trixie, registry: Registry,
                                                 pushed: tuple) -> None:
    """The trap docs/signing.md warns of: Debian 12 builds skopeo 1.9 with
    sigstore disabled, so it refuses what 1.18 accepts, and cannot sign."""
    import subprocess
    repo, ref, digest = pushed
    ours = stacko_keys(trixie, "ours")
    stacko_sign(registry, repo, digest, ref, ours)
    policy_file = sigstore_policy(trixie, f"{registry.host}/{repo}", Path(f"{ours}.pub"))
    skopeo_check(trixie, policy_file, ref)
    # The host's skopeo, with the same files under their host names.
    policy_file.write_text(policy_file.read_text().replace(
        trixie.path(Path(f"{ours}.pub")), str(Path(f"{ours}.pub"))))
    version = subprocess.run(["skopeo", "--version"], capture_output=True, text=True).stdout
    if "version 1.9." not in version:
        pytest.skip(f"the host's skopeo is not Debian 12's 1.9: {version}")
    old = subprocess.run(["skopeo", "--policy", str(policy_file),
                          "--registries.d", str(registries_d(trixie)), "copy",
                          "--remove-signatures", "--src-tls-verify=false", f"docker://{ref}",
                          f"oci:{trixie.work / 'old'}:x"], capture_output=True, text=True)
    assert old.returncode == 1 and "sigstore disabled" in old.stderr, old.stderr


def test_a_tampered_signature_is_refused_by_both(trixie: Trixie, registry: Registry,
                                                 pushed: tuple) -> None:
    repo, ref, digest = pushed
    ours = stacko_keys(trixie, "ours")
    data, signature = stacko_sign(registry, repo, digest, ref, ours)
    raw = bytearray(base64.b64decode(signature))
    raw[-3] ^= 0x40
    tampered = base64.b64encode(bytes(raw)).decode()
    # Replace the attachment with one whose only layer carries the tampered signature.
    sigstore_manifest = {"schemaVersion": 2, "mediaType": sigstore.OCI_MANIFEST,
                         "config": None, "layers": []}
    c = client(registry, repo, push=True)
    config = b'{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}'
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    sigstore.send(c, config, config_digest)
    sigstore_manifest["config"] = {"mediaType": sigstore.OCI_CONFIG, "digest": config_digest,
                                   "size": len(config)}
    sigstore_manifest["layers"] = [{
        "mediaType": sigstore.SIGNATURE_TYPE, "size": len(data),
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "annotations": {sigstore.SIGNATURE_ANNOTATION: tampered}}]
    c.put_manifest(sigstore.attachment_tag(digest), json.dumps(sigstore_manifest).encode(),
                   sigstore.OCI_MANIFEST)
    assert sigstore.fetch_signatures(client(registry, repo), repo, digest) == [(data, tampered)]
    refused = skopeo_check(trixie, sigstore_policy(trixie, f"{registry.host}/{repo}",
                                                   Path(f"{ours}.pub")), ref, rc=1)
    assert "cryptographic signature verification failed" in refused.stderr
    loaded = stacko_policy(trixie.work / "p.json", f"{registry.host}/{repo}",
                           Path(f"{ours}.pub"))
    with pytest.raises(policy.PolicyRefused):
        policy.evaluate(loaded, ref, digest, Signatures(registry, repo, digest))


def test_a_signature_copied_to_another_repository_is_refused_by_both(
        trixie: Trixie, registry: Registry, pushed: tuple, layout: Path) -> None:
    """The same image in two repositories has one digest: a signature of
    REPO:v1 attached in OTHER as well names REPO, which OTHER's policy refuses."""
    repo, ref, digest = pushed
    other_repo = repo + "-copy"
    skopeo_push(registry, f"oci:{layout}:v1", f"{other_repo}:v1")
    assert manifest_digest(registry, other_repo, "v1") == digest
    ours = stacko_keys(trixie, "ours")
    data, signature = stacko_sign(registry, repo, digest, ref, ours)
    sigstore.attach(client(registry, other_repo, push=True), other_repo, digest, data, signature)
    other_ref = f"{registry.host}/{other_repo}:v1"
    refused = skopeo_check(trixie, sigstore_policy(trixie, f"{registry.host}/{other_repo}",
                                                   Path(f"{ours}.pub")), other_ref, rc=1)
    assert f'identity \\"{ref}\\" is not accepted' in refused.stderr     # logrus quotes
    loaded = stacko_policy(trixie.work / "p.json", f"{registry.host}/{other_repo}",
                           Path(f"{ours}.pub"))
    with pytest.raises(policy.PolicyRefused) as e:
        policy.evaluate(loaded, other_ref, digest, Signatures(registry, other_repo, digest))
    assert e.value.reason == policy.IDENTITY
    # ... and both accept it where it was signed.
    skopeo_check(trixie, sigstore_policy(trixie, f"{registry.host}/{repo}",
                                         Path(f"{ours}.pub")), ref)
    loaded = stacko_policy(trixie.work / "p.json", f"{registry.host}/{repo}",
                           Path(f"{ours}.pub"))
    policy.evaluate(loaded, ref, digest, Signatures(registry, repo, digest))


def test_a_signature_for_another_tag_is_refused_by_both(trixie: Trixie, registry: Registry,
                                                        pushed: tuple) -> None:
    """matchRepoDigestOrExact: by tag, the signed reference must be that very tag."""
    repo, ref, digest = pushed
    ours = stacko_keys(trixie, "ours")
    stacko_sign(registry, repo, digest, f"{registry.host}/{repo}:v2", ours)
    refused = skopeo_check(trixie, sigstore_policy(trixie, f"{registry.host}/{repo}",
                                                   Path(f"{ours}.pub")), ref, rc=1)
    assert f'identity \\"{registry.host}/{repo}:v2\\" is not accepted' in refused.stderr
    loaded = stacko_policy(trixie.work / "p.json", f"{registry.host}/{repo}",
                           Path(f"{ours}.pub"))
    with pytest.raises(policy.PolicyRefused) as e:
        policy.evaluate(loaded, ref, digest, Signatures(registry, repo, digest))
    assert e.value.reason == policy.IDENTITY

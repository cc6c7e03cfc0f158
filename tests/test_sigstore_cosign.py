"""Sigstore key signatures both ways with cosign 2.5 (Debian 13, in the chroot):
stacko reads cosign's keys (ENCRYPTED SIGSTORE PRIVATE KEY) and cosign reads
stacko's; cosign verifies what stacko signs; stacko checks what cosign signs.

cosign signs the repository alone (`docker-reference: host/repo`, no tag):
the default signedIdentity, matchRepoDigestOrExact, refuses such a signature
whether the image is pulled by tag or by digest (containers/image's
policy_reference_match.go: a name-only signed reference never matches it);
`matchRepository` accepts it.  docs/signing.md says so; these tests hold it,
for stacko and for skopeo 1.18 alike.  cosign runs offline: --tlog-upload=false to sign,
--insecure-ignore-tlog=true to verify."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pytest

from conftest import Runner, snapshot
from ocigen import d, f, write_layout
from registryd import Registry, available, skopeo_push
from registryfix import registry  # noqa: F401  (the fixture)
from stacko.signing import cosignkey, payload as payload_mod, sigstore
from test_sigstore_interop import (PASS, client, manifest_digest, skopeo_check, sigstore_policy,
                                   stacko_keys, write)
from trixiefix import Trixie, trixie, trixie_root  # noqa: F401  (the fixtures)

pytestmark = pytest.mark.skipif(not available(),
                                reason="docker-registry is needed (tests/install-deps.sh)")

OFFLINE = ("--allow-http-registry", "--allow-insecure-registry")
LAYERS = [[d("etc"), f("etc/os-release", b"ID=cosigned\n")], [f("app", b"cosign\n")]]


def cosign_keys(trixie: Trixie, password: str = PASS) -> Path:
    """cosign generate-key-pair: cosign.key and cosign.pub in the chroot's /mnt."""
    trixie.cosign("generate-key-pair", password=password)
    return trixie.work / "cosign"


def cosign_sign(trixie: Trixie, key: Path, image: str, password: str = PASS) -> None:
    trixie.cosign("sign", "--key", trixie.path(key), "--tlog-upload=false", "--yes", *OFFLINE,
                  image, password=password)


def cosign_verify(trixie: Trixie, pub: Path, image: str, rc: Optional[int] = 0):
    return trixie.cosign("verify", "--key", trixie.path(pub), "--insecure-ignore-tlog=true",
                         *OFFLINE, image, rc=rc)


@pytest.fixture
def pushed(registry: Registry, tmp_path: Path, request: pytest.FixtureRequest) -> tuple:
    import hashlib
    repo = "cosign-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:10]
    layout = tmp_path / "layout"
    write_layout(layout, LAYERS, ref="v1")
    skopeo_push(registry, f"oci:{layout}:v1", f"{repo}:v1")
    return repo, f"{registry.host}/{repo}:v1", manifest_digest(registry, repo, "v1")


def test_keys_both_ways(trixie: Trixie, registry: Registry, pushed: tuple) -> None:
    repo, ref, digest = pushed
    theirs = cosign_keys(trixie)
    pem = Path(f"{theirs}.key").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    key = cosignkey.load_private(pem, PASS.encode())
    assert cosignkey.public_pem(key.public_key()) == Path(f"{theirs}.pub").read_bytes()
    # cosign signs with a key stacko made; stacko's check finds and accepts it.
    ours = stacko_keys(trixie, "ours")
    cosign_sign(trixie, Path(f"{ours}.private"), f"{registry.host}/{repo}@{digest}")
    (data, signature), = sigstore.fetch_signatures(client(registry, repo), repo, digest)
    assert sigstore.verify(data, signature, [Path(f"{ours}.pub").read_bytes()])
    signed = payload_mod.parse(data, payload_mod.SIGSTORE)
    assert (signed.reference, signed.digest) == (f"{registry.host}/{repo}", digest)


def test_cosign_verifies_what_stacko_pushes(stacko: Runner, trixie: Trixie, registry: Registry,
                                            tmp_path: Path) -> None:
    """push-image --sign-by-sigstore-private-key with a key cosign made."""
    layout = tmp_path / "layout"
    write_layout(layout, LAYERS, ref="v1")
    stacko("import-image", "app", str(layout))
    theirs = cosign_keys(trixie)
    write(trixie.work / "pass", PASS + "\n")
    ref = f"{registry.host}/by-stacko:v1"
    stacko("push-image", "app", ref, "--tls-verify=false",
           "--sign-by-sigstore-private-key", f"{theirs}.key",
           "--sign-passphrase-file", str(trixie.work / "pass"))
    r = cosign_verify(trixie, Path(f"{theirs}.pub"), ref)
    assert "signatures were verified against the specified public key" in r.stdout + r.stderr
    other = stacko_keys(trixie, "other")
    r = cosign_verify(trixie, Path(f"{other}.pub"), ref, rc=None)
    assert r.returncode != 0 and "no matching signatures" in r.stderr


def test_what_cosign_signs_names_the_repository(stacko: Runner, root: Path, trixie: Trixie,
                                                registry: Registry, pushed: tuple,
                                                tmp_path: Path) -> None:
    repo, ref, digest = pushed
    theirs = cosign_keys(trixie)
    cosign_sign(trixie, Path(f"{theirs}.key"), f"{registry.host}/{repo}@{digest}")
    scope = f"{registry.host}/{repo}"
    pub = Path(f"{theirs}.pub")

    def policy(identity: dict = None) -> str:
        requirement = {"type": "sigstoreSigned", "keyPath": str(pub)}
        if identity:
            requirement["signedIdentity"] = identity
        path = tmp_path / f"policy-{len(list(tmp_path.iterdir()))}.json"
        write(path, json.dumps({"default": [{"type": "reject"}],
                                "transports": {"docker": {scope: [requirement]}}}))
        return str(path)

    # Under the default identity, by tag or by digest: refused, by stacko and skopeo alike.
    for image in (ref, f"{registry.host}/{repo}@{digest}"):
        before = snapshot(root)
        mark = registry.mark()
        r = stacko("pull-image", "app", image, "--tls-verify=false", "--policy", policy(), rc=1)
        assert "identity not accepted" in r.stderr
        assert not set(registry.blob_gets(mark)) & layer_digests(registry, repo)
        assert snapshot(root) == before
        refused = skopeo_check(trixie, sigstore_policy(trixie, scope, pub), image, rc=1)
        assert "is not accepted" in refused.stderr
    # matchRepository: accepted, by tag and by digest.
    for name, image in (("bytag", ref), ("bydigest", f"{registry.host}/{repo}@{digest}")):
        stacko("pull-image", name, image, "--tls-verify=false",
               "--policy", policy({"type": "matchRepository"}))
        skopeo_check(trixie, sigstore_policy(trixie, scope, pub,
                                             identity={"type": "matchRepository"}), image)


def layer_digests(registry: Registry, repo: str) -> set:
    import urllib.request
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        manifest = json.loads(r.read())
    return {manifest["config"]["digest"]} | {layer["digest"] for layer in manifest["layers"]}

"""Sigstore signing end to end, through the command line, against skopeo 1.18
(Debian 13 chroot) and a real registry: push-image
--sign-by-sigstore-private-key signs what skopeo then accepts; pull-image
--policy accepts what skopeo signed and refuses the rest before any blob is
fetched, recording nothing; a wrong passphrase uploads nothing; no secret is
ever printed."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict

import pytest

from conftest import Runner, snapshot
from ocigen import d, f, write_layout
from registryd import Registry, available
from registryfix import registry  # noqa: F401  (the fixture)
from stacko.signing import sigstore
from test_sigstore_interop import (PASS, client, manifest_digest, registries_d, skopeo_check,
                                   skopeo_keys, sigstore_policy, stacko_keys, write)
from trixiefix import Trixie, trixie, trixie_root  # noqa: F401  (the fixtures)

pytestmark = pytest.mark.skipif(not available(),
                                reason="docker-registry is needed (tests/install-deps.sh)")

LAYERS = [[d("etc"), f("etc/os-release", b"ID=fleet\n")], [d("srv"), f("srv/app", b"v1\n" * 99)]]


@pytest.fixture
def image(stacko: Runner, tmp_path: Path) -> str:
    """An image of two layers in this test's root (import-image: no mount needed)."""
    layout = tmp_path / "layout"
    write_layout(layout, LAYERS, ref="v1")
    stacko("import-image", "fleet", str(layout))
    return "fleet"


def repo_of(request: pytest.FixtureRequest) -> str:
    return "cli-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:10]


def stacko_policy(path: Path, scope: str, *pubs: Path) -> str:
    doc = {"default": [{"type": "reject"}],
           "transports": {"docker": {scope: [{"type": "sigstoreSigned",
                                              "keyPaths": [str(p) for p in pubs]}]}}}
    write(path, json.dumps(doc))
    return str(path)


def no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


# --- push-image --sign-by-sigstore-private-key ---------------------------------------
@pytest.mark.parametrize("maker", ["stacko", "skopeo"])
def test_push_signs_and_skopeo_accepts(stacko: Runner, image: str, trixie: Trixie,
                                       registry: Registry, request: pytest.FixtureRequest,
                                       maker: str) -> None:
    """With a key stacko made (N=32768) and one skopeo 1.18 made (N=65536)."""
    repo = repo_of(request)
    ref = f"{registry.host}/{repo}:v1"
    prefix = (stacko_keys if maker == "stacko" else skopeo_keys)(trixie, "signer")
    r = stacko("-v", "push-image", image, ref, "--tls-verify=false",
               "--sign-by-sigstore-private-key", f"{prefix}.private",
               "--sign-passphrase-file", f"{prefix}.pass")
    assert r.stdout == ""
    no_secret(r.stderr, PASS)
    digest = manifest_digest(registry, repo, "v1")
    found = sigstore.fetch_signatures(client(registry, repo), repo, digest)
    assert len(found) == 1
    scope = f"{registry.host}/{repo}"
    skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{prefix}.pub")), ref)
    other = stacko_keys(trixie, "other")
    refused = skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{other}.pub")), ref,
                           rc=1)
    assert "cryptographic signature verification failed" in refused.stderr

    # Pushed and signed again (the same manifest): a payload with a new timestamp is
    # one more layer, the same bytes never are.
    stacko("push-image", image, ref, "--tls-verify=false",
           "--sign-by-sigstore-private-key", f"{prefix}.private",
           "--sign-passphrase-file", f"{prefix}.pass")
    assert len(sigstore.fetch_signatures(client(registry, repo), repo, digest)) in (1, 2)
    # Signed by a second key: both signatures, and either key is then enough for skopeo.
    stacko("push-image", image, ref, "--tls-verify=false",
           "--sign-by-sigstore-private-key", f"{other}.private",
           "--sign-passphrase-file", f"{other}.pass")
    skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{other}.pub")), ref)
    skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{prefix}.pub")), ref)


def test_sign_identity_is_what_skopeo_checks(stacko: Runner, image: str, trixie: Trixie,
                                             registry: Registry,
                                             request: pytest.FixtureRequest) -> None:
    repo = repo_of(request)
    prefix = stacko_keys(trixie, "signer")
    ref = f"{registry.host}/{repo}:v1"
    stacko("push-image", image, ref, "--tls-verify=false",
           "--sign-by-sigstore-private-key", f"{prefix}.private",
           "--sign-passphrase-file", f"{prefix}.pass",
           "--sign-identity", f"{registry.host}/{repo}:stable")
    scope = f"{registry.host}/{repo}"
    refused = skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{prefix}.pub")), ref,
                           rc=1)
    assert "is not accepted" in refused.stderr
    skopeo_check(trixie, sigstore_policy(trixie, scope, Path(f"{prefix}.pub"), identity={
        "type": "exactReference", "dockerReference": f"{registry.host}/{repo}:stable"}), ref)


@pytest.mark.parametrize("problem", ["wrong passphrase", "no key file", "not a key",
                                     "no passphrase file"])
def test_a_key_that_cannot_sign_uploads_nothing(stacko: Runner, image: str, trixie: Trixie,
                                                registry: Registry, root: Path,
                                                request: pytest.FixtureRequest,
                                                problem: str) -> None:
    repo = repo_of(request)
    prefix = stacko_keys(trixie, "signer")
    key, passfile = Path(f"{prefix}.private"), Path(f"{prefix}.pass")
    if problem == "wrong passphrase":
        write(passfile, "not the passphrase\n")
    elif problem == "no key file":
        key = trixie.work / "absent.private"
    elif problem == "not a key":
        key = Path(f"{prefix}.pub")
    else:
        passfile = trixie.work / "absent.pass"
    before = snapshot(root)
    mark = registry.mark()
    r = stacko("-v", "push-image", image, f"{registry.host}/{repo}:v1", "--tls-verify=false",
               "--sign-by-sigstore-private-key", str(key), "--sign-passphrase-file",
               str(passfile), rc=1)
    assert r.stdout == ""
    no_secret(r.stderr, PASS, "not the passphrase")
    if problem == "wrong passphrase":
        assert "wrong passphrase" in r.stderr
    if problem == "no key file":
        assert r.stderr.count(str(key)) == 1 and "No such file" in r.stderr
    assert registry.requests(mark) == []          # not even a HEAD: found first
    assert snapshot(root) == before


# --- pull-image --policy ------------------------------------------------------------
@pytest.fixture
def by_skopeo(trixie: Trixie, registry: Registry, tmp_path: Path,
              request: pytest.FixtureRequest) -> Dict[str, object]:
    """An image skopeo 1.18 pushed and signed with a key it made."""
    layout = trixie.work / "layout"
    write_layout(layout, LAYERS, ref="v1")
    prefix = skopeo_keys(trixie, "skopeo")
    repo = repo_of(request)
    ref = f"{registry.host}/{repo}:v1"
    trixie.skopeo("--insecure-policy", "--registries.d", trixie.path(registries_d(trixie)),
                  "copy", "--dest-tls-verify=false",
                  "--sign-by-sigstore-private-key", trixie.path(Path(f"{prefix}.private")),
                  "--sign-passphrase-file", trixie.path(Path(f"{prefix}.pass")),
                  f"oci:{trixie.path(layout)}:v1", f"docker://{ref}")
    return {"repo": repo, "ref": ref, "pub": Path(f"{prefix}.pub"),
            "digest": manifest_digest(registry, repo, "v1")}


def test_pull_accepts_what_skopeo_signed(stacko: Runner, root: Path, registry: Registry,
                                         by_skopeo: Dict[str, object], tmp_path: Path) -> None:
    scope = f"{registry.host}/{by_skopeo['repo']}"
    policy_file = stacko_policy(tmp_path / "policy.json", scope, tmp_path / "absent.pub")
    # A key file the policy names but that does not exist: an error, never accept.
    r = stacko("pull-image", "app", str(by_skopeo["ref"]), "--tls-verify=false",
               "--policy", policy_file, rc=1)
    assert "absent.pub" in r.stderr
    other = stacko_keys_in(tmp_path, "other")
    policy_file = stacko_policy(tmp_path / "policy.json", scope, Path(f"{other}.pub"),
                                by_skopeo["pub"])                 # type: ignore[arg-type]
    stacko("pull-image", "app", str(by_skopeo["ref"]), "--tls-verify=false",
           "--policy", policy_file)
    listing = {i["name"]: i for i in json.loads(stacko("list-images", "--json").stdout)}
    kept = listing["app"].get("signatures")
    assert kept and kept[0]["type"] == "sigstore"
    assert kept[0]["identity"] == by_skopeo["ref"] and kept[0]["digest"] == by_skopeo["digest"]
    # Offline, again: the same policy accepts; one without the key refuses.
    stacko("verify-image", "app", "--policy", policy_file)
    narrow = stacko_policy(tmp_path / "narrow.json", scope, Path(f"{other}.pub"))
    r = stacko("verify-image", "app", "--policy", narrow, rc=1)
    assert r.stdout.startswith("S app no key matched")


def stacko_keys_in(directory: Path, prefix: str) -> Path:
    write(directory / f"{prefix}.pass", PASS + "\n")
    from conftest import run_stacko
    run_stacko(None, "generate-sigstore-key", "--output-prefix", str(directory / prefix),
               "--passphrase-file", str(directory / f"{prefix}.pass"))
    return directory / prefix


@pytest.mark.parametrize("case, reason", [
    ("other key", "no key matched"),
    ("tampered", "no key matched"),
    ("copied to another repository", "identity not accepted"),
    ("unsigned", "no signature"),
])
def test_pull_refuses_before_any_blob(stacko: Runner, root: Path, registry: Registry,
                                      by_skopeo: Dict[str, object], tmp_path: Path,
                                      case: str, reason: str) -> None:
    repo, ref, digest = by_skopeo["repo"], str(by_skopeo["ref"]), str(by_skopeo["digest"])
    keys = [by_skopeo["pub"]]
    if case == "other key":
        keys = [Path(f"{stacko_keys_in(tmp_path, 'other')}.pub")]
    elif case == "tampered":
        (data, signature), = sigstore.fetch_signatures(client(registry, repo), repo, digest)
        flipped = signature[:20] + ("A" if signature[20] != "A" else "B") + signature[21:]
        replace_signatures(registry, str(repo), digest, [(data, flipped)])
    elif case in ("copied to another repository", "unsigned"):
        target = f"{repo}-other"
        shutil_copy_image(registry, str(repo), target)
        if case == "copied to another repository":
            for data, signature in sigstore.fetch_signatures(client(registry, repo), repo,
                                                             digest):
                sigstore.attach(client(registry, target, push=True), target, digest, data,
                                signature)
        repo, ref = target, f"{registry.host}/{target}:v1"
    policy_file = stacko_policy(tmp_path / "policy.json", f"{registry.host}/{repo}",
                                *keys)                            # type: ignore[arg-type]
    before = snapshot(root)
    mark = registry.mark()
    r = stacko("pull-image", "app", ref, "--tls-verify=false", "--policy", policy_file, rc=1)
    assert reason in r.stderr, r.stderr
    # Signature payloads are blobs too; none of the image's was fetched.
    assert not set(registry.blob_gets(mark)) & layer_and_config_digests(registry, str(repo))
    assert snapshot(root) == before


def layer_and_config_digests(registry: Registry, repo: str) -> set:
    import urllib.request
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        manifest = json.loads(r.read())
    return {manifest["config"]["digest"]} | {layer["digest"] for layer in manifest["layers"]}


def shutil_copy_image(registry: Registry, source: str, target: str) -> None:
    """The same manifest under another repository, blobs mounted across."""
    import urllib.request

    from stacko.registry.push import mount_blob
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    request = urllib.request.Request(f"http://{registry.host}/v2/{source}/manifests/v1",
                                     headers=accept)
    with urllib.request.urlopen(request, timeout=10) as r:
        body = r.read()
    c = client(registry, target, push=True)
    for digest in layer_and_config_digests(registry, source):
        assert mount_blob(c, digest, source)
    c.put_manifest("v1", body, "application/vnd.oci.image.manifest.v1+json")


def replace_signatures(registry: Registry, repo: str, digest: str, pairs: list) -> None:
    """The attachment rewritten to hold exactly these (payload, signature) pairs."""
    c = client(registry, repo, push=True)
    layers = []
    for data, signature in pairs:
        blob = "sha256:" + hashlib.sha256(data).hexdigest()
        sigstore.send(c, data, blob)
        layers.append({"mediaType": sigstore.SIGNATURE_TYPE, "digest": blob, "size": len(data),
                       "annotations": {sigstore.SIGNATURE_ANNOTATION: signature}})
    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [x["digest"] for x in layers]}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    sigstore.send(c, config, config_digest)
    manifest = {"schemaVersion": 2, "mediaType": sigstore.OCI_MANIFEST,
                "config": {"mediaType": sigstore.OCI_CONFIG, "digest": config_digest,
                           "size": len(config)}, "layers": layers}
    c.put_manifest(sigstore.attachment_tag(digest), json.dumps(manifest).encode(),
                   sigstore.OCI_MANIFEST)



# --- multi-platform images -----------------------------------------------------------
def platforms(registry: Registry, repo: str) -> Dict[str, str]:
    """{architecture: manifest digest} of the index repo:1, and "index": its own digest."""
    import urllib.request
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/1",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        body = r.read()
    found = {m["platform"]["architecture"]: m["digest"] for m in json.loads(body)["manifests"]}
    found["index"] = "sha256:" + hashlib.sha256(body).hexdigest()
    return found


def test_skopeo_signs_every_platform_and_stacko_checks_each(
        stacko: Runner, root: Path, trixie: Trixie, registry: Registry, tmp_path: Path) -> None:
    """skopeo copy --all --sign-by-sigstore-private-key signs each platform's
    manifest (and the index); stacko checks the one it installs."""
    import shutil
    from test_registry import multi_platform
    shutil.copytree(multi_platform(tmp_path / "m"), trixie.work / "multi")
    prefix = skopeo_keys(trixie, "skopeo")
    ref = f"{registry.host}/multi-signed:1"
    trixie.skopeo("--insecure-policy", "--registries.d", trixie.path(registries_d(trixie)),
                  "copy", "--all", "--dest-tls-verify=false",
                  "--sign-by-sigstore-private-key", trixie.path(Path(f"{prefix}.private")),
                  "--sign-passphrase-file", trixie.path(Path(f"{prefix}.pass")),
                  f"oci:{trixie.path(trixie.work / 'multi')}:multi", f"docker://{ref}")
    digests = platforms(registry, "multi-signed")
    for what in ("amd64", "arm64", "index"):
        assert len(sigstore.fetch_signatures(client(registry, "multi-signed"), "multi-signed",
                                             digests[what])) == 1, what
    policy_file = stacko_policy(tmp_path / "policy.json", f"{registry.host}/multi-signed",
                                Path(f"{prefix}.pub"))
    for arch in ("amd64", "arm64"):
        stacko("pull-image", arch, ref, "--platform", f"linux/{arch}", "--tls-verify=false",
               "--policy", policy_file)
        kept = {i["name"]: i for i in json.loads(stacko("list-images", "--json").stdout)}
        assert kept[arch]["signatures"][0]["digest"] == digests[arch]


@pytest.mark.parametrize("signed", ["amd64", "index"])
def test_only_a_signed_platform_manifest_counts(stacko: Runner, root: Path, trixie: Trixie,
                                                registry: Registry, tmp_path: Path,
                                                signed: str) -> None:
    """One platform signed: the other is refused before any blob. Only the index
    signed (cosign sign without --recursive): every platform is refused."""
    import subprocess
    from test_registry import multi_platform
    from test_sigstore_interop import stacko_sign
    repo = f"multi-{signed}"
    ref = f"{registry.host}/{repo}:1"
    subprocess.run(["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false",
                    f"oci:{multi_platform(tmp_path / 'm')}:multi", f"docker://{ref}"],
                   check=True, capture_output=True)
    digests = platforms(registry, repo)
    prefix = stacko_keys(trixie, "ours")
    stacko_sign(registry, repo, digests[signed], ref, prefix)
    policy_file = stacko_policy(tmp_path / "policy.json", f"{registry.host}/{repo}",
                                Path(f"{prefix}.pub"))
    for arch in ("amd64", "arm64"):
        argv = ["pull-image", arch, ref, "--platform", f"linux/{arch}", "--tls-verify=false",
                "--policy", policy_file]
        if arch == signed:
            stacko(*argv)
            continue
        before = snapshot(root)
        mark = registry.mark()
        r = stacko(*argv, rc=1)
        assert "no signature" in r.stderr
        image_blobs = set(registry.blob_gets(mark)) - {
            "sha256:" + hashlib.sha256(p).hexdigest()
            for p, _ in sigstore.fetch_signatures(client(registry, repo), repo, digests[arch])}
        assert image_blobs == set()
        assert snapshot(root) == before

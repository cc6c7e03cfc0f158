"""GnuPG simple signing against the real tools: skopeo 1.9 signs and stacko
checks, stacko signs and skopeo checks; every refusal of pull-image fetches
no blob (the registry's log) and records nothing (the state root)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import EXIT_PROBE, Runner, snapshot
from gpgkeys import PASSPHRASE, Keys, keys  # noqa: F401  (keys: the fixture)
from ocigen import f, write_layout
from pgppackets import tampered, uncompressed
from registryd import Registry, available
from registryfix import registry  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(
    not (available() and shutil.which("skopeo") and shutil.which("gpg")),
    reason="docker-registry, skopeo and gpg are needed (tests/install-deps.sh)")

@pytest.fixture(scope="module")
def sigs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A registries.d whose default lookaside is a directory of its own."""
    base = tmp_path_factory.mktemp("lookaside")
    store, regd = base / "sigstore", base / "registries.d"
    store.mkdir()
    regd.mkdir()
    (regd / "default.yaml").write_text(
        f"# as skopeo 1.9 reads it\ndefault-docker:\n  sigstore: file://{store}\n"
        f"  sigstore-staging: file://{store}\n")
    return {"store": store, "regd": regd}


def policy(workdir: Path, *reqs: dict, name: str = "policy.json",
           scopes: Dict[str, list] = None) -> str:
    doc = {"default": list(reqs) or [{"type": "insecureAcceptAnything"}]}
    if scopes:
        doc["transports"] = {"docker": scopes}
    path = workdir / name
    path.write_text(json.dumps(doc))
    return str(path)


def signed_by(keys: Keys, *names: str, **extra: object) -> dict:
    req = {"type": "signedBy", "keyType": "GPGKeys"}
    if len(names) == 1:
        req["keyPath"] = str(keys.pub[names[0]])
    else:
        req["keyPaths"] = [str(keys.pub[n]) for n in names]
    req.update(extra)
    return req


def layout(base: Path, text: str) -> Path:
    path = base / text
    if not path.exists():
        write_layout(path, [[f("etc/release", text.encode())], [f("srv/app", text.encode() * 50)]],
                     ref="latest")
    return path


def skopeo_copy(registry: Registry, keys: Keys, source: str, dest: str, *extra: str) -> None:
    subprocess.run(["skopeo", "copy", "-q", *registry.skopeo_dest(), *extra, source,
                    f"docker://{registry.host}/{dest}"], check=True, capture_output=True,
                   env=dict(os.environ, HOME=str(registry.base), **keys.env))


def manifest_digest(registry: Registry, ref: str) -> str:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{registry.host}/{ref}"], check=True,
                         capture_output=True).stdout
    return "sha256:" + hashlib.sha256(out).hexdigest()


def sigdir(sigs: Dict[str, Path], repo: str, digest: str) -> Path:
    return sigs["store"] / f"{repo}@{digest.replace(':', '=')}"


@pytest.fixture(scope="module")
def images(registry: Registry, keys: Keys, sigs: Dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """Images in the registry: signed by skopeo (alice, bob), unsigned."""
    base = tmp_path_factory.mktemp("layouts")
    regd = ["--registries.d", str(sigs["regd"])]
    skopeo_copy(registry, keys, f"oci:{layout(base, 'one')}:latest", "signed:v1",
                "--sign-by", keys.fpr["alice"], *regd)
    skopeo_copy(registry, keys, f"oci:{layout(base, 'one')}:latest", "signed:v2")
    skopeo_copy(registry, keys, f"oci:{layout(base, 'one')}:latest", "copied:v1")
    skopeo_copy(registry, keys, f"oci:{layout(base, 'two')}:latest", "bob:v1",
                "--sign-by", keys.fpr["bob"], *regd)
    skopeo_copy(registry, keys, f"oci:{layout(base, 'three')}:latest", "plain:v1")
    skopeo_copy(registry, keys, f"oci:{layout(base, 'four')}:latest", "signed:other")
    return {"host": registry.host}


def image_blobs(registry: Registry, ref: str) -> set:
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                     f"docker://{ref}"], check=True,
                                    capture_output=True).stdout)
    return {raw["config"]["digest"]} | {layer["digest"] for layer in raw["layers"]}


def refused(stacko: Runner, root: Path, registry: Registry, *argv: str,
            sigstore: bool = False) -> str:
    """pull-image ARGV must exit 1, fetch no blob and change nothing; its stderr.
    (With sigstore, the blobs of the .sig attachment are read: no blob of the image.)"""
    before = snapshot(root)
    mark = registry.mark()
    r = stacko("pull-image", *argv, "--tls-verify=false", rc=1)
    if sigstore:
        assert not set(registry.blob_gets(mark)) & image_blobs(registry, argv[1]), r.stderr
    else:
        assert registry.blob_gets(mark) == [], r.stderr
    assert snapshot(root) == before
    return r.stderr


# --- stacko checks what skopeo signed ---------------------------------------------------------
def test_stacko_accepts_what_skopeo_signed_and_keeps_it(
        stacko: Runner, root: Path, workdir: Path, registry: Registry, keys: Keys,
        sigs: Dict[str, Path], images: Dict[str, str]) -> None:
    p = policy(workdir, {"type": "reject"},
               scopes={registry.host: [signed_by(keys, "alice")]})
    stacko("pull-image", "app", f"{registry.host}/signed:v1", "--policy", p,
           "--registries.d", str(sigs["regd"]), "--tls-verify=false")
    listed = {i["name"]: i for i in json.loads(stacko("list-images", "--json").out)}
    assert [(s["type"], s["signer"], s["identity"]) for s in listed["app"]["signatures"]] == \
        [("gpg", keys.fpr["alice"], f"{registry.host}/signed:v1")]
    # Offline: the kept signature is checked again, under this policy and another.
    assert stacko("verify-image", "app", "--policy", p).out == ""
    other = policy(workdir, signed_by(keys, "bob"), name="bob.json")
    r = stacko("verify-image", "app", "--policy", other, rc=1)
    assert r.out == "S app no key matched"
    accept = policy(workdir, name="accept.json")
    assert stacko("verify-image", "app", "--policy", accept).out == ""
    # What was kept is checked too: a manifest changed in images.json is caught.
    state = json.loads((root / "images.json").read_text())
    kept = state["images"]["app"]["signed"]
    manifest = json.loads(base64.b64decode(kept["manifest"]))
    manifest["annotations"] = {"changed": "after the pull"}
    kept["manifest"] = base64.b64encode(json.dumps(manifest).encode()).decode()
    (root / "images.json").write_text(json.dumps(state))
    r = stacko("verify-image", "app", "--policy", p, rc=1)
    assert r.out == "S app bad signature" and "does not match its digest" in r.stderr


def test_key_rotation_with_key_paths(stacko: Runner, workdir: Path, registry: Registry,
                                     keys: Keys, sigs: Dict[str, Path],
                                     images: Dict[str, str]) -> None:
    p = policy(workdir, signed_by(keys, "carol", "alice"))
    stacko("pull-image", "app", f"{registry.host}/signed:v1", "--policy", p,
           "--registries.d", str(sigs["regd"]), "--tls-verify=false")


def test_unsigned_image_is_refused(stacko: Runner, root: Path, workdir: Path,
                                   registry: Registry, keys: Keys, sigs: Dict[str, Path],
                                   images: Dict[str, str]) -> None:
    p = policy(workdir, signed_by(keys, "alice"))
    err = refused(stacko, root, registry, "app", f"{registry.host}/plain:v1", "--policy", p,
                  "--registries.d", str(sigs["regd"]))
    assert "no signature" in err and "nothing was fetched" in err


def test_signature_by_another_key_is_refused(stacko: Runner, root: Path, workdir: Path,
                                             registry: Registry, keys: Keys,
                                             sigs: Dict[str, Path],
                                             images: Dict[str, str]) -> None:
    p = policy(workdir, signed_by(keys, "alice"))
    err = refused(stacko, root, registry, "app", f"{registry.host}/bob:v1", "--policy", p,
                  "--registries.d", str(sigs["regd"]))
    assert "no key matched" in err


def test_signature_for_another_tag_or_repository_is_refused(
        stacko: Runner, root: Path, workdir: Path, registry: Registry, keys: Keys,
        sigs: Dict[str, Path], images: Dict[str, str]) -> None:
    p = policy(workdir, signed_by(keys, "alice"))
    digest = manifest_digest(registry, "signed:v1")
    # signed:v2 is the same manifest: alice's signature, for signed:v1, is found...
    err = refused(stacko, root, registry, "app", f"{registry.host}/signed:v2", "--policy", p,
                  "--registries.d", str(sigs["regd"]))
    assert "identity not accepted" in err and f"{registry.host}/signed:v1" in err
    # ... and copied beside the same manifest in another repository.
    target = sigdir(sigs, "copied", digest)
    shutil.copytree(sigdir(sigs, "signed", digest), target, dirs_exist_ok=True)
    err = refused(stacko, root, registry, "app", f"{registry.host}/copied:v1", "--policy", p,
                  "--registries.d", str(sigs["regd"]))
    assert "identity not accepted" in err
    # By digest, any tag of the same repository will do (matchRepoDigestOrExact).
    stacko("pull-image", "bydigest", f"{registry.host}/signed@{digest}", "--policy", p,
           "--registries.d", str(sigs["regd"]), "--tls-verify=false")
    # matchRepository accepts v2 (same repository); never the other repository.
    loose = policy(workdir, signed_by(keys, "alice",
                                      signedIdentity={"type": "matchRepository"}),
                   name="loose.json")
    stacko("pull-image", "v2", f"{registry.host}/signed:v2", "--policy", loose,
           "--registries.d", str(sigs["regd"]), "--tls-verify=false")
    refused(stacko, root, registry, "app", f"{registry.host}/copied:v1", "--policy", loose,
            "--registries.d", str(sigs["regd"]))


def test_signature_for_another_manifest_is_refused(
        stacko: Runner, root: Path, workdir: Path, registry: Registry, keys: Keys,
        sigs: Dict[str, Path], images: Dict[str, str]) -> None:
    p = policy(workdir, signed_by(keys, "alice"))
    signed, other = (manifest_digest(registry, t) for t in ("signed:v1", "signed:other"))
    shutil.copytree(sigdir(sigs, "signed", signed), sigdir(sigs, "signed", other),
                    dirs_exist_ok=True)
    try:
        err = refused(stacko, root, registry, "app", f"{registry.host}/signed:other",
                      "--policy", p, "--registries.d", str(sigs["regd"]))
        assert "signature for another manifest" in err and signed in err
    finally:
        shutil.rmtree(sigdir(sigs, "signed", other))


def test_a_damaged_signature_by_a_policy_key_is_bad_not_a_strangers(keys: Keys) -> None:
    """gpg cannot check a signature whose digest algorithm byte was damaged
    (ERRSIG, not NO_PUBKEY): it is a bad signature by alice, not one by a key
    the policy does not name (it was, when any ERRSIG meant an unknown key)."""
    from stacko.signing import gpg
    good = keys.sign("alice", b"payload")
    with gpg.Keyring([keys.pub["alice"].read_bytes()]) as ring:
        assert ring.verify(uncompressed(good)) == (keys.fpr["alice"], b"payload")
        for where in ("digest algorithm", "payload", "signature"):
            with pytest.raises(gpg.BadSignature) as e:
                ring.verify(tampered(good, where))
            assert not e.value.unknown_key, (where, e.value.detail)


@pytest.mark.parametrize("where", ["payload", "signature", "digest algorithm"])
def test_tampered_signature_is_refused(stacko: Runner, root: Path, workdir: Path,
                                       registry: Registry, keys: Keys, sigs: Dict[str, Path],
                                       images: Dict[str, str], where: str) -> None:
    # Flipped at a chosen place of the uncompressed message: a byte flipped in
    # the compressed one can change the issuer's key id (a signature by another
    # key, rightly "no key matched") or an unsigned field (still good).
    p = policy(workdir, signed_by(keys, "alice"))
    digest = manifest_digest(registry, "signed:v1")
    sig = sigdir(sigs, "signed", digest) / "signature-1"
    good = sig.read_bytes()
    from stacko.signing import gpg
    with gpg.Keyring([keys.pub["alice"].read_bytes()]) as ring:    # only the bit is wrong
        assert ring.verify(uncompressed(good))[0] == keys.fpr["alice"]
    try:
        sig.write_bytes(tampered(good, where))
        err = refused(stacko, root, registry, "app", f"{registry.host}/signed:v1",
                      "--policy", p, "--registries.d", str(sigs["regd"]))
        assert "bad signature" in err and "no key matched" not in err
    finally:
        sig.write_bytes(good)


def test_reject_accept_and_unparseable_policies(stacko: Runner, root: Path, workdir: Path,
                                                registry: Registry, keys: Keys,
                                                sigs: Dict[str, Path],
                                                images: Dict[str, str]) -> None:
    ref = f"{registry.host}/plain:v1"
    err = refused(stacko, root, registry, "app", ref, "--policy",
                  policy(workdir, {"type": "reject"}, name="reject.json"))
    assert "rejects" in err
    for text in ("{", '{"default": []}', '{"default": [{"type": "signedBy", "keyType": '
                 '"GPGKeys"}]}', '{"default": [{"type": "insecureAcceptAnything"}], "x": 1}'):
        (workdir / "bad.json").write_text(text)
        mark = registry.mark()
        err = refused(stacko, root, registry, "app", ref, "--policy", str(workdir / "bad.json"))
        assert "invalid policy in" in err and registry.requests(mark) == []
    missing_key = policy(workdir, {"type": "signedBy", "keyType": "GPGKeys",
                                   "keyPath": str(workdir / "none.gpg")}, name="nokey.json")
    assert "cannot read the key file" in refused(stacko, root, registry, "app", ref,
                                                  "--policy", missing_key)
    refused(stacko, root, registry, "app", ref, "--policy", str(workdir / "absent.json"))
    stacko("pull-image", "app", ref, "--policy", policy(workdir, name="accept.json"),
           "--tls-verify=false")
    listed = json.loads(stacko("list-images", "--json").out)
    assert all(i["signatures"] == [] for i in listed)


def test_only_the_signed_platform_of_an_index_is_accepted(
        stacko: Runner, root: Path, workdir: Path, registry: Registry, keys: Keys,
        sigs: Dict[str, Path], images: Dict[str, str]) -> None:
    from test_registry import multi_platform
    from stacko.signing import payload
    layout_dir = multi_platform(workdir / "m")
    skopeo_copy(registry, keys, f"oci:{layout_dir}:multi", "multi:1", "--all")
    index = json.loads(subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false",
         f"docker://{registry.host}/multi:1"], check=True, capture_output=True).stdout)
    amd64 = next(m["digest"] for m in index["manifests"]
                 if m["platform"]["architecture"] == "amd64")
    target = sigdir(sigs, "multi", amd64)
    target.mkdir()
    (target / "signature-1").write_bytes(keys.sign("alice", payload.make(
        f"{registry.host}/multi:1", amd64, payload.GPG)))
    p = policy(workdir, signed_by(keys, "alice"))
    ref = f"{registry.host}/multi:1"
    err = refused(stacko, root, registry, "arm", ref, "--platform", "linux/arm64",
                  "--policy", p, "--registries.d", str(sigs["regd"]))
    assert "no signature" in err
    stacko("pull-image", "amd", ref, "--platform", "linux/amd64", "--policy", p,
           "--registries.d", str(sigs["regd"]), "--tls-verify=false")


# --- skopeo checks what stacko signed ---------------------------------------------------------
@pytest.fixture
def pushed(stacko: Runner, workdir: Path) -> str:
    write_layout(workdir / "src", [[f("etc/release", b"pushed")],
                                   [f("srv/app", os.urandom(3000))]], ref="latest")
    stacko("import-image", "local", str(workdir / "src"))
    return "local"


def skopeo_check(registry: Registry, keys: Keys, sigs: Dict[str, Path], policy_path: str,
                 ref: str, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["skopeo", "copy", "-q", "--remove-signatures", "--policy",
                           policy_path, "--registries.d",
                           str(sigs["regd"]), "--src-tls-verify=false",
                           f"docker://{registry.host}/{ref}", f"oci:{dest}:x"],
                          capture_output=True, text=True,
                          env=dict(os.environ, HOME=str(registry.base)))


def test_skopeo_accepts_what_stacko_signed(stacko: Runner, workdir: Path, registry: Registry,
                                           keys: Keys, sigs: Dict[str, Path],
                                           pushed: str) -> None:
    ref = "stacko-signed:v1"
    stacko("push-image", pushed, f"{registry.host}/{ref}", "--sign-by", keys.fpr["alice"],
           "--registries.d", str(sigs["regd"]), "--tls-verify=false", env=keys.env)
    good = policy(workdir, signed_by(keys, "alice"), name="alice.json")
    bad = policy(workdir, signed_by(keys, "bob"), name="bob.json")
    r = skopeo_check(registry, keys, sigs, good, ref, workdir / "ok")
    assert r.returncode == 0, r.stderr
    r = skopeo_check(registry, keys, sigs, bad, ref, workdir / "no")
    assert r.returncode != 0 and "Source image rejected" in r.stderr, r.stderr
    # And stacko itself reads it back, as the contract's identity says.
    stacko("pull-image", "back", f"{registry.host}/{ref}", "--policy", good,
           "--registries.d", str(sigs["regd"]), "--tls-verify=false")
    # Signing again adds no second copy of the same signature.
    digest = manifest_digest(registry, ref)
    assert [p.name for p in sigdir(sigs, "stacko-signed", digest).iterdir()] == ["signature-1"]


def test_sign_identity_and_a_passphrase_file(stacko: Runner, workdir: Path,
                                             registry: Registry, keys: Keys,
                                             sigs: Dict[str, Path], pushed: str) -> None:
    ref = "stacko-carol:v1"
    pw = workdir / "pass"
    pw.write_text(PASSPHRASE + "\n")
    r = stacko("-v", "push-image", pushed, f"{registry.host}/{ref}", "--sign-by",
               keys.fpr["carol"], "--sign-passphrase-file", str(pw), "--sign-identity",
               "prod.example.com/app:stable", "--registries.d", str(sigs["regd"]),
               "--tls-verify=false", env=keys.env)
    assert PASSPHRASE not in r.stdout + r.stderr
    assert "--passphrase-file" in r.stderr          # -v shows gpg's argv: a path, not a secret
    plain = policy(workdir, signed_by(keys, "carol"), name="carol.json")
    r = skopeo_check(registry, keys, sigs, plain, ref, workdir / "no")
    assert r.returncode != 0, r.stderr
    exact = policy(workdir, signed_by(keys, "carol", signedIdentity={
        "type": "exactReference", "dockerReference": "prod.example.com/app:stable"}),
        name="exact.json")
    r = skopeo_check(registry, keys, sigs, exact, ref, workdir / "ok")
    assert r.returncode == 0, r.stderr
    stacko("pull-image", "c", f"{registry.host}/{ref}", "--policy", exact,
           "--registries.d", str(sigs["regd"]), "--tls-verify=false")


@pytest.mark.parametrize("case", ["wrong passphrase", "unknown key", "no passphrase file",
                                  "identity alone"])
def test_signing_problems_are_found_before_any_upload(
        stacko: Runner, workdir: Path, registry: Registry, keys: Keys, sigs: Dict[str, Path],
        pushed: str, case: str) -> None:
    pw = workdir / "pass"
    pw.write_text("not the passphrase\n")
    extra: List[str] = {
        "wrong passphrase": ["--sign-by", keys.fpr["carol"], "--sign-passphrase-file", str(pw)],
        "unknown key": ["--sign-by", "0123456789ABCDEF0123456789ABCDEF01234567"],
        "no passphrase file": ["--sign-by", keys.fpr["alice"], "--sign-passphrase-file",
                               str(workdir / "none")],
        "identity alone": ["--sign-identity", "a.io/b:c"]}[case]
    # gpg-agent would sign with a passphrase it cached earlier, whatever the file says.
    subprocess.run(["gpgconf", "--reload", "gpg-agent"], env=dict(os.environ, **keys.env),
                   capture_output=True)
    mark = registry.mark()
    r = stacko("push-image", pushed, f"{registry.host}/never:v1", *extra, "--registries.d",
               str(sigs["regd"]), "--tls-verify=false", env=keys.env, rc=None)
    assert r.returncode == (2 if case == "identity alone" else 1), r.stderr
    assert registry.requests(mark) == [], r.stderr
    assert "not the passphrase" not in r.stderr


# --- the sigstore half, through the same orchestration -----------------------------------------
def test_sigstore_signing_on_push_and_checking_on_pull(
        stacko: Runner, root: Path, workdir: Path, registry: Registry, pushed: str) -> None:
    pw = workdir / "pass"
    pw.write_text("sigstore pass\n")
    for name in ("mine", "other"):
        stacko("generate-sigstore-key", "--output-prefix", str(workdir / name),
               "--passphrase-file", str(pw))
    ref = f"{registry.host}/cosigned:v1"
    r = stacko("-v", "push-image", pushed, ref, "--sign-by-sigstore-private-key",
               str(workdir / "mine.private"), "--sign-passphrase-file", str(pw),
               "--tls-verify=false")
    assert "sigstore pass" not in r.stderr
    good = policy(workdir, {"type": "sigstoreSigned", "keyPath": str(workdir / "mine.pub")},
                  name="mine.json")
    bad = policy(workdir, {"type": "sigstoreSigned", "keyPath": str(workdir / "other.pub")},
                 name="other.json")
    err = refused(stacko, root, registry, "c", ref, "--policy", bad, sigstore=True)
    assert "no key matched" in err
    stacko("pull-image", "c", ref, "--policy", good, "--tls-verify=false")
    listed = {i["name"]: i for i in json.loads(stacko("list-images", "--json").out)}
    assert [(s["type"], s["identity"]) for s in listed["c"]["signatures"]] == \
        [("sigstore", f"{registry.host}/cosigned:v1")]
    assert stacko("verify-image", "c", "--policy", good).out == ""
    assert stacko("verify-image", "c", "--policy", bad, rc=1).out == "S c no key matched"
    # A wrong passphrase is found before anything is uploaded.
    (workdir / "wrong").write_text("nope\n")
    mark = registry.mark()
    stacko("push-image", pushed, f"{registry.host}/cosigned:v2",
           "--sign-by-sigstore-private-key", str(workdir / "mine.private"),
           "--sign-passphrase-file", str(workdir / "wrong"), "--tls-verify=false", rc=1)
    assert registry.requests(mark) == []


def test_signatures_read_from_an_http_lookaside(stacko: Runner, root: Path, workdir: Path,
                                                registry: Registry, keys: Keys,
                                                sigs: Dict[str, Path],
                                                images: Dict[str, str]) -> None:
    """Hosts read the lookaside the build machine published, over HTTP(S)."""
    import functools
    import http.server
    import threading
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(sigs["store"]))
    handler.log_message = lambda *a: None       # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        regd = workdir / "http.d"
        regd.mkdir()
        (regd / "web.yaml").write_text(
            f"docker:\n  {registry.host}:\n"
            f"    lookaside: http://127.0.0.1:{httpd.server_address[1]}\n")
        p = policy(workdir, signed_by(keys, "alice"))
        stacko("pull-image", "app", f"{registry.host}/signed:v1", "--policy", p,
               "--registries.d", str(regd), "--tls-verify=false")
        err = refused(stacko, root, registry, "bob", f"{registry.host}/bob:v1", "--policy", p,
                      "--registries.d", str(regd))
        assert "no key matched" in err
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_one_good_signature_among_others_is_enough(stacko: Runner, workdir: Path,
                                                   registry: Registry, keys: Keys,
                                                   sigs: Dict[str, Path],
                                                   images: Dict[str, str]) -> None:
    from stacko.signing import payload
    digest = manifest_digest(registry, "bob:v1")
    second = sigdir(sigs, "bob", digest) / "signature-2"
    second.write_bytes(keys.sign("alice", payload.make(f"{registry.host}/bob:v1", digest,
                                                       payload.GPG)))
    try:
        p = policy(workdir, signed_by(keys, "alice"))
        stacko("pull-image", "b", f"{registry.host}/bob:v1", "--policy", p,
               "--registries.d", str(sigs["regd"]), "--tls-verify=false")
        listed = {i["name"]: i for i in json.loads(stacko("list-images", "--json").out)}
        assert [s["signer"] for s in listed["b"]["signatures"]] == [keys.fpr["alice"]]
    finally:
        second.unlink()


def test_gpg_checks_exactly_one_signature_by_the_policys_keys(keys: Keys) -> None:
    """As containers/image: a message signed twice, or not signed, is no signature."""
    from stacko.signing import gpg
    data = b'{"critical": {}}'
    both = keys.gpg("--local-user", keys.fpr["alice"], "--local-user", keys.fpr["bob"],
                    "--sign", input=data).stdout
    with gpg.Keyring([keys.pub["alice"].read_bytes(), keys.pub["bob"].read_bytes()]) as ring:
        assert ring.verify(keys.sign("bob", data)) == (keys.fpr["bob"], data)
        with pytest.raises(gpg.BadSignature, match="exactly one"):
            ring.verify(both)
        clear = keys.gpg("--local-user", keys.fpr["alice"], "--clearsign", input=data).stdout
        assert ring.verify(clear)[0] == keys.fpr["alice"]     # gpg's own framing, still one
        encrypted = keys.gpg("--symmetric", "--passphrase", "x", "--pinentry-mode",
                             "loopback", input=data).stdout
        with pytest.raises(gpg.BadSignature):
            ring.verify(encrypted)
    with gpg.Keyring([keys.pub["alice"].read_bytes()]) as ring:
        with pytest.raises(gpg.BadSignature) as e:
            ring.verify(keys.sign("bob", data))
        assert e.value.unknown_key
        with pytest.raises(gpg.BadSignature):
            ring.verify(both)


def test_a_pull_leaves_no_keyring_behind(stacko: Runner, root: Path, workdir: Path,
                                         registry: Registry, keys: Keys, sigs: Dict[str, Path],
                                         images: Dict[str, str], tmp_path: Path) -> None:
    """Accepted, refused for want of a signature, or failed before its manifest
    was read: pull-image leaves no GnuPG home behind in $TMPDIR."""
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    env = {"TMPDIR": str(temp)}
    p = policy(workdir, signed_by(keys, "alice"))
    regd = ["--registries.d", str(sigs["regd"]), "--tls-verify=false"]
    stacko("pull-image", "app", f"{registry.host}/signed:v1", "--policy", p, *regd, env=env)
    stacko("pull-image", "plain", f"{registry.host}/plain:v1", "--policy", p, *regd,
           env=env, rc=1)
    stacko("pull-image", "gone", f"{registry.host}/signed:no-such-tag", "--policy", p, *regd,
           env=env, rc=1)
    assert list(temp.iterdir()) == []


def test_pull_image_ends_without_the_teardown(stacko: Runner, root: Path, workdir: Path,
                                              registry: Registry, keys: Keys,
                                              sigs: Dict[str, Path],
                                              images: Dict[str, str]) -> None:
    """pull-image ends as import-image does (cli.quick_exit_safe): through
    os._exit with its status, once all it opened is closed, signed or not,
    accepted or refused; what it pulled is recorded all the same."""
    import sys
    probe = EXIT_PROBE
    signed = policy(workdir, signed_by(keys, "alice"))
    accept = policy(workdir, name="accept.json")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    for name, ref, pol, status in (("a", "signed:v1", signed, 0), ("b", "plain:v1", signed, 1),
                                   ("c", "plain:v1", accept, 0)):
        r = subprocess.run([sys.executable, "-c", probe, "--root", str(root), "pull-image",
                            name, f"{registry.host}/{ref}", "--policy", pol,
                            "--registries.d", str(sigs["regd"]), "--tls-verify=false"],
                           stderr=subprocess.PIPE, text=True, env=env)
        assert r.returncode == status and r.stderr.endswith(f"os._exit({status})"), r.stderr
    assert {i["name"] for i in json.loads(stacko("list-images", "--json").out)} >= {"a", "c"}
    assert "b" not in {i["name"] for i in json.loads(stacko("list-images", "--json").out)}

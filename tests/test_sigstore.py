"""Sigstore keys and signatures: cosign's encrypted key files
(stacko/signing/cosignkey.py), signing and checking, the ``sha256-<hex>.sig``
attachment in a real registry (stacko/signing/sigstore.py), and the
generate-sigstore-key command.  The interop with skopeo 1.18 is in
test_sigstore_interop.py."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from conftest import run_stacko
from registryd import Registry, available
from registryfix import registry  # noqa: F401  (the fixture)
from stacko.errors import StackoError
from stacko.signing import cosignkey, sigstore

PASS = b"correct horse battery staple"
DIGEST = "sha256:" + "ab" * 32


def cosign_payload(reference: str, digest: str) -> bytes:
    """A payload as containers/image writes it (stacko.signing.payload makes the real ones)."""
    return json.dumps({"critical": {"identity": {"docker-reference": reference},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": "cosign container image signature"},
                       "optional": {"creator": "stacko tests"}},
                      separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def keypair() -> tuple:
    return cosignkey.generate(PASS)


def envelope(private_pem: bytes) -> dict:
    _, body = cosignkey.pem_decode(private_pem, cosignkey.PRIVATE_LABELS, "k")
    return json.loads(body)


def reseal(private_pem: bytes, change) -> bytes:
    """private_pem with its envelope changed by change(dict)."""
    data = envelope(private_pem)
    change(data)
    return cosignkey.pem_encode(cosignkey.COSIGN_LABEL, json.dumps(data).encode())


# --- keys --------------------------------------------------------------------------
def test_generated_key_has_cosigns_format(keypair: tuple) -> None:
    private, public = keypair
    text = private.decode()
    assert text.startswith("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n")
    assert text.endswith("-----END ENCRYPTED COSIGN PRIVATE KEY-----\n")
    assert all(len(line) <= 64 for line in text.splitlines())
    _, body = cosignkey.pem_decode(private, cosignkey.PRIVATE_LABELS, "k")
    # Go's json.Marshal of go-securesystemslib's struct: this order, compact.
    assert list(json.loads(body)) == ["kdf", "cipher", "ciphertext"]
    assert b" " not in body
    data = json.loads(body)
    assert data["kdf"]["name"] == "scrypt"
    assert data["kdf"]["params"] == {"N": 32768, "r": 8, "p": 1}
    assert len(base64.b64decode(data["kdf"]["salt"])) == 32
    assert data["cipher"]["name"] == "nacl/secretbox"
    assert len(base64.b64decode(data["cipher"]["nonce"])) == 24
    assert public.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    key = cosignkey.load_private(private, PASS)
    from cryptography.hazmat.primitives.asymmetric import ec
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cosignkey.public_pem(key.public_key()) == public


def test_two_keys_differ() -> None:
    a, b = cosignkey.generate(PASS), cosignkey.generate(PASS)
    assert a[1] != b[1] and envelope(a[0])["kdf"]["salt"] != envelope(b[0])["kdf"]["salt"]


def test_sigstore_label_and_stronger_scrypt_are_read(keypair: tuple) -> None:
    key = cosignkey.load_private(keypair[0], PASS)
    from cryptography.hazmat.primitives import serialization
    pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    for n in (1 << 16, 1 << 17):
        pem = cosignkey.pem_encode(cosignkey.SIGSTORE_LABEL, cosignkey.encrypt(pkcs8, PASS, n))
        again = cosignkey.load_private(pem, PASS)
        assert cosignkey.public_pem(again.public_key()) == keypair[1]


def test_wrong_passphrase(keypair: tuple) -> None:
    with pytest.raises(cosignkey.WrongPassphrase) as e:
        cosignkey.load_private(keypair[0], b"not it", "key.private")
    assert "wrong passphrase" in e.value.message and "not it" not in e.value.message


@pytest.mark.parametrize("change, words", [
    (lambda d: d["kdf"]["params"].update(N=1 << 20), "unsupported scrypt parameters"),
    (lambda d: d["kdf"]["params"].update(N=1 << 14), "unsupported scrypt parameters"),
    (lambda d: d["kdf"]["params"].update(r=16), "unsupported scrypt parameters"),
    (lambda d: d["kdf"].update(name="argon2"), "unknown key derivation"),
    (lambda d: d["cipher"].update(name="aes"), "unknown cipher"),
    (lambda d: d["cipher"].update(nonce=base64.b64encode(b"x" * 12).decode()), "nonce"),
    (lambda d: d.pop("ciphertext"), "ciphertext"),
    (lambda d: d.update(ciphertext="%%%"), "not base64"),
    (lambda d: d["kdf"]["params"].update(N="32768"), "'N'"),
])
def test_bad_envelopes_are_refused_before_any_work(keypair: tuple, change, words: str) -> None:
    with pytest.raises(cosignkey.KeyUnreadable) as e:
        cosignkey.load_private(reseal(keypair[0], change), PASS)
    assert words in e.value.message


def test_tampered_ciphertext_is_refused(keypair: tuple) -> None:
    def flip(d: dict) -> None:
        raw = bytearray(base64.b64decode(d["ciphertext"]))
        raw[-1] ^= 1
        d["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(cosignkey.WrongPassphrase):
        cosignkey.load_private(reseal(keypair[0], flip), PASS)


@pytest.mark.parametrize("pem, words", [
    (b"", "not a PEM file"),
    (b"\xff\xfe", "not a PEM file"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "'PRIVATE KEY'"),
    (b"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\nAAAA\n", "no -----END"),
    (b"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n!!!\n"
     b"-----END ENCRYPTED COSIGN PRIVATE KEY-----\n", "not valid base64"),
    (b"-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\nAAAA\n"
     b"-----END ENCRYPTED COSIGN PRIVATE KEY-----\n", "not JSON"),
    (b"x" * (cosignkey.MAX_KEY_FILE + 1), "larger"),
])
def test_what_is_no_private_key(pem: bytes, words: str) -> None:
    with pytest.raises(cosignkey.KeyUnreadable) as e:
        cosignkey.load_private(pem, PASS)
    assert words in e.value.message


def test_a_public_key_is_no_private_key(keypair: tuple) -> None:
    with pytest.raises(cosignkey.KeyUnreadable):
        cosignkey.load_private(keypair[1], PASS)
    with pytest.raises(cosignkey.KeyUnreadable):
        cosignkey.load_public(keypair[0])


def test_public_keys(keypair: tuple) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = cosignkey.load_public(keypair[1])
    assert cosignkey.public_pem(key) == keypair[1]
    assert cosignkey.public_pem(cosignkey.load_public(keypair[1].decode())) == keypair[1]
    # Text around the block is ignored, as Go's pem.Decode ignores it.
    assert cosignkey.load_public(b"# fleet key\n" + keypair[1] + b"trailing\n")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pkcs1 = rsa_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    assert pkcs1.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    assert isinstance(cosignkey.load_public(pkcs1), rsa.RSAPublicKey)
    with pytest.raises(cosignkey.KeyUnreadable):
        cosignkey.load_public(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_passphrase_file_is_its_first_line(tmp_path: Path) -> None:
    for content, wanted in ((b"one\ntwo\n", b"one"), (b"no newline", b"no newline"),
                            (b"crlf\r\n", b"crlf\r"), (b"\n", b""), (b"", b"")):
        (tmp_path / "p").write_bytes(content)
        assert cosignkey.read_passphrase_file(str(tmp_path / "p")) == wanted
    with pytest.raises(StackoError):
        cosignkey.read_passphrase_file(str(tmp_path / "absent"))


def test_key_files_are_read_bounded(tmp_path: Path) -> None:
    with pytest.raises(cosignkey.KeyUnreadable) as e:
        cosignkey.read_key_file("/dev/zero", "the key")
    assert "not a regular file" in e.value.message
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(cosignkey.KeyUnreadable):        # no writer: must not hang
        cosignkey.read_key_file(str(tmp_path / "fifo"), "the key")
    (tmp_path / "big").write_bytes(b"x" * (cosignkey.MAX_KEY_FILE + 1))
    with pytest.raises(cosignkey.KeyUnreadable):
        cosignkey.read_key_file(str(tmp_path / "big"), "the key")


# --- signatures --------------------------------------------------------------------
def test_sign_and_verify(keypair: tuple) -> None:
    key = cosignkey.load_private(keypair[0], PASS)
    payload = cosign_payload("registry.example:5000/app:v1", DIGEST)
    signature = sigstore.sign(payload, key)
    der = base64.b64decode(signature, validate=True)
    assert der[0] == 0x30                                   # ASN.1 DER, as Go's SignASN1
    other = cosignkey.generate(b"other")[1]
    assert sigstore.verify(payload, signature, [keypair[1]])
    assert sigstore.verify(payload, signature, [other, keypair[1]])      # keyPaths: any one
    assert not sigstore.verify(payload, signature, [other])
    assert not sigstore.verify(payload + b" ", signature, [keypair[1]])
    assert not sigstore.verify(payload.replace(b"v1", b"v2"), signature, [keypair[1]])
    tampered = bytearray(der)
    tampered[-1] ^= 1
    assert not sigstore.verify(payload, base64.b64encode(bytes(tampered)).decode(), [keypair[1]])
    for bad in ("", "%%%", signature[:-2], "AAAA", 5):
        assert not sigstore.verify(payload, bad, [keypair[1]])          # type: ignore[arg-type]
    # Go's StdEncoding skips CR and LF only.
    assert sigstore.verify(payload, signature[:10] + "\r\n" + signature[10:], [keypair[1]])


def test_a_broken_key_is_an_error_not_a_no(keypair: tuple) -> None:
    key = cosignkey.load_private(keypair[0], PASS)
    payload = cosign_payload("registry.example:5000/app:v1", DIGEST)
    signature = sigstore.sign(payload, key)
    with pytest.raises(cosignkey.KeyUnreadable):
        sigstore.verify(payload, signature, [keypair[1], b"not a key"])
    with pytest.raises(sigstore.SignatureError):
        sigstore.verify(payload, signature, [])


def test_rsa_and_ed25519_keys_sign_as_containers_image_does() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    payload = cosign_payload("registry.example:5000/app:v1", DIGEST)
    for key in (rsa.generate_private_key(public_exponent=65537, key_size=2048),
                ed25519.Ed25519PrivateKey.generate()):
        pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        pem = cosignkey.pem_encode(cosignkey.SIGSTORE_LABEL, cosignkey.encrypt(pkcs8, PASS))
        loaded = cosignkey.load_private(pem, PASS)
        public = cosignkey.public_pem(loaded.public_key())
        assert sigstore.verify(payload, sigstore.sign(payload, loaded), [public])


def test_attachment_tag() -> None:
    assert sigstore.attachment_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"
    for bad in ("sha256:" + "AB" * 32, "sha512:" + "ab" * 32, "sha256:abc", "ab" * 32,
                "sha256:" + "ab" * 32 + "/../x"):
        with pytest.raises(sigstore.SignatureError):
            sigstore.attachment_tag(bad)


# --- the attachment in a real registry ----------------------------------------------
needs_registry = pytest.mark.skipif(not available(),
                                    reason="docker-registry is needed (tests/install-deps.sh)")


def client(registry: Registry, repo: str, push: bool = True):
    from stacko.registry.client import Client, Options
    from stacko.registry.ref import parse
    return Client(parse(f"{registry.host}/{repo}:latest"), Options(tls_verify=False), push=push)


def get_json(registry: Registry, repo: str, reference: str) -> dict:
    import urllib.request
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/{reference}",
        headers={"Accept": sigstore.OCI_MANIFEST})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.headers["Content-Type"] == sigstore.OCI_MANIFEST
        return json.loads(r.read())


def get_blob(registry: Registry, repo: str, digest: str) -> bytes:
    import urllib.request
    with urllib.request.urlopen(f"http://{registry.host}/v2/{repo}/blobs/{digest}",
                                timeout=10) as r:
        return r.read()


def fake_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@needs_registry
def test_no_attachment_is_no_signature(registry: Registry) -> None:
    c = client(registry, "nothing", push=False)
    assert sigstore.fetch_signatures(c, "nothing", fake_digest("absent")) == []


@needs_registry
def test_attach_writes_what_containers_image_writes(registry: Registry, keypair: tuple) -> None:
    key = cosignkey.load_private(keypair[0], PASS)
    digest = fake_digest("one")
    payload = cosign_payload(f"{registry.host}/signed:v1", digest)
    signature = sigstore.sign(payload, key)
    c = client(registry, "signed")
    mark = registry.mark()
    sigstore.attach(c, "signed", digest, payload, signature)
    tag = "sha256-" + digest[len("sha256:"):] + ".sig"
    manifest = get_json(registry, "signed", tag)
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == sigstore.OCI_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert manifest["layers"] == [{
        "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "digest": "sha256:" + hashlib.sha256(payload).hexdigest(), "size": len(payload),
        "annotations": {"dev.cosignproject.cosign/signature": signature}}]
    config = json.loads(get_blob(registry, "signed", manifest["config"]["digest"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": [manifest["layers"][0]["digest"]]}
    assert get_blob(registry, "signed", manifest["layers"][0]["digest"]) == payload
    # ... then it read the tag again.
    assert [r for r in registry.requests(mark) if r[0] == "PUT" and "/manifests/" in r[1]]
    assert sigstore.fetch_signatures(c, "signed", digest) == [(payload, signature)]

    # The same signature again: nothing is written.
    mark = registry.mark()
    sigstore.attach(c, "signed", digest, payload, signature)
    assert not [r for r in registry.requests(mark) if r[0] in ("PUT", "POST")]
    assert len(get_json(registry, "signed", tag)["layers"]) == 1

    # A second signature (another key) is appended, the first one kept.
    other = cosignkey.load_private(cosignkey.generate(b"2")[0], b"2")
    second = sigstore.sign(payload, other)
    sigstore.attach(c, "signed", digest, payload, second)
    found = sigstore.fetch_signatures(client(registry, "signed", push=False), "signed", digest)
    assert found == [(payload, signature), (payload, second)]
    manifest = get_json(registry, "signed", tag)
    config = json.loads(get_blob(registry, "signed", manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in manifest["layers"]]


def put(registry: Registry, repo: str, data: bytes) -> dict:
    """A blob uploaded by hand; its descriptor."""
    c = client(registry, repo)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    sigstore.send(c, data, digest)
    return {"digest": digest, "size": len(data)}


def put_attachment(registry: Registry, repo: str, digest: str, layers: list) -> None:
    config = put(registry, repo, b"{}")
    manifest = {"schemaVersion": 2, "mediaType": sigstore.OCI_MANIFEST,
                "config": {"mediaType": sigstore.OCI_CONFIG, **config}, "layers": layers}
    client(registry, repo).put_manifest(sigstore.attachment_tag(digest),
                                        json.dumps(manifest).encode(), sigstore.OCI_MANIFEST)


@needs_registry
def test_other_attachments_are_skipped_and_kept(registry: Registry, keypair: tuple) -> None:
    digest = fake_digest("attested")
    attestation = {"mediaType": "application/vnd.dsse.envelope.v1+json",
                   **put(registry, "mixed", b'{"payloadType":"x"}'),
                   "annotations": {"predicateType": "https://slsa.dev/provenance/v1"}}
    payload = cosign_payload(f"{registry.host}/mixed:v1", digest)
    unsigned = {"mediaType": sigstore.SIGNATURE_TYPE, **put(registry, "mixed", payload)}
    put_attachment(registry, "mixed", digest, [attestation, unsigned])
    c = client(registry, "mixed")
    # A signature layer without the annotation counts, with no signature at all.
    assert sigstore.fetch_signatures(c, "mixed", digest) == [(payload, "")]
    signature = sigstore.sign(payload, cosignkey.load_private(keypair[0], PASS))
    sigstore.attach(c, "mixed", digest, payload, signature)
    layers = get_json(registry, "mixed", sigstore.attachment_tag(digest))["layers"]
    assert layers[:2] == [attestation, unsigned] and len(layers) == 3
    assert sigstore.fetch_signatures(c, "mixed", digest) == [(payload, ""), (payload, signature)]


class Fake:
    """A hostile registry: serves the documents put in `routes`, and 404 else."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        routes: dict = {}
        self.routes = routes

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                media, body = routes.get(self.path, ("application/json", None))
                self.send_response(200 if body is not None else 404)
                body = body if body is not None else b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'
                self.send_header("Content-Type", media)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, address: object) -> None:
                pass            # a client that stops reading early, on purpose

        self.server = Server(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self):
        from stacko.registry.client import Client, Options
        from stacko.registry.ref import parse
        return Client(parse(f"{self.host}/hostile:latest"), Options(tls_verify=False))

    def attachment(self, digest: str, manifest: object,
                   media: str = sigstore.OCI_MANIFEST) -> None:
        body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        self.routes[f"/v2/hostile/manifests/{sigstore.attachment_tag(digest)}"] = (media, body)

    def blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.routes[f"/v2/hostile/blobs/{digest}"] = ("application/octet-stream", data)
        return digest


@pytest.fixture(scope="module")
def fake() -> Fake:
    f = Fake()
    yield f
    f.server.shutdown()


def layered(*layers: dict) -> dict:
    return {"schemaVersion": 2, "mediaType": sigstore.OCI_MANIFEST,
            "config": {"mediaType": sigstore.OCI_CONFIG, "digest": fake_digest("c"), "size": 2},
            "layers": list(layers)}


SIG = sigstore.SIGNATURE_TYPE


@pytest.mark.parametrize("manifest, words", [
    (layered({"mediaType": SIG, "digest": "sha256:../../x", "size": 3}), "malformed descriptor"),
    (layered({"mediaType": SIG, "digest": fake_digest("x"), "size": -1}), "malformed descriptor"),
    (layered({"mediaType": SIG, "digest": fake_digest("x"), "size": True}),
     "malformed descriptor"),
    (layered({"mediaType": SIG, "digest": fake_digest("x"), "size": 1, "annotations": []}),
     "malformed descriptor"),
    (layered({"mediaType": SIG, "digest": fake_digest("x"), "size": 5 << 20}),
     "larger than 4 MiB"),
    (layered(*[{"mediaType": "x", "digest": fake_digest("x"), "size": 1}] * 1001),
     "no valid list of layers"),
    ({"layers": "none"}, "no valid list of layers"),
    (b"[]", "not a JSON object"),
    (b"{" * 100000, "not valid JSON"),
    (b"{}" + b" " * (5 << 20), "larger than 4 MiB"),
])
def test_hostile_attachments_are_refused(fake: Fake, manifest: object, words: str) -> None:
    digest = fake_digest(repr(manifest)[:1000])
    fake.attachment(digest, manifest)
    with pytest.raises(sigstore.SignatureError) as e:
        sigstore.fetch_signatures(fake.client(), "hostile", digest)
    assert words in e.value.message


def test_an_attachment_of_another_type_is_refused(fake: Fake) -> None:
    digest = fake_digest("docker type")
    fake.attachment(digest, layered(),
                    media="application/vnd.docker.distribution.manifest.v2+json")
    with pytest.raises(sigstore.SignatureError) as e:
        sigstore.fetch_signatures(fake.client(), "hostile", digest)
    assert "not an OCI image manifest" in e.value.message


def test_a_payload_that_is_not_what_its_descriptor_says(fake: Fake) -> None:
    payload = cosign_payload("h/r:t", DIGEST)
    good = fake.blob(payload)
    for size, name in ((len(payload) - 1, "short"), (len(payload) + 1, "long")):
        digest = fake_digest(name)
        fake.attachment(digest, layered({"mediaType": SIG, "digest": good, "size": size}))
        with pytest.raises(sigstore.SignatureError) as e:
            sigstore.fetch_signatures(fake.client(), "hostile", digest)
        assert "does not match its digest" in e.value.message
    digest = fake_digest("swapped")
    fake.routes[f"/v2/hostile/blobs/{fake_digest('liar')}"] = ("x", payload)
    fake.attachment(digest, layered({"mediaType": SIG, "digest": fake_digest("liar"),
                                     "size": len(payload)}))
    with pytest.raises(sigstore.SignatureError) as e:
        sigstore.fetch_signatures(fake.client(), "hostile", digest)
    assert "does not match its digest" in e.value.message
    digest = fake_digest("fine")
    fake.attachment(digest, layered({"mediaType": SIG, "digest": good, "size": len(payload),
                                     "annotations": {sigstore.SIGNATURE_ANNOTATION: "c2ln"}}))
    assert sigstore.fetch_signatures(fake.client(), "hostile", digest) == [(payload, "c2ln")]


@needs_registry
def test_another_repository_of_the_same_registry(registry: Registry, keypair: tuple) -> None:
    digest = fake_digest("elsewhere")
    payload = cosign_payload(f"{registry.host}/there:v1", digest)
    signature = sigstore.sign(payload, cosignkey.load_private(keypair[0], PASS))
    sigstore.attach(client(registry, "here"), "there", digest, payload, signature)
    assert sigstore.fetch_signatures(client(registry, "x", push=False), "there",
                                     digest) == [(payload, signature)]
    assert sigstore.fetch_signatures(client(registry, "x", push=False), "here", digest) == []


# --- generate-sigstore-key -----------------------------------------------------------
def test_generate_sigstore_key(tmp_path: Path) -> None:
    secret = "a passphrase of 7 words, not shown"
    (tmp_path / "pass").write_text(secret + "\nsecond line ignored\n")
    r = run_stacko(None, "generate-sigstore-key", "--output-prefix", str(tmp_path / "fleet"),
                   "--passphrase-file", str(tmp_path / "pass"))
    assert r.stdout == "" and secret not in r.stderr
    private, public = tmp_path / "fleet.private", tmp_path / "fleet.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    key = cosignkey.load_private(private.read_bytes(), secret.encode())
    assert cosignkey.public_pem(key.public_key()) == public.read_bytes()
    assert envelope(private.read_bytes())["kdf"]["params"]["N"] == 32768

    # Never overwritten, either file.
    before = private.read_bytes(), public.read_bytes()
    r = run_stacko(None, "generate-sigstore-key", "--output-prefix", str(tmp_path / "fleet"),
                   "--passphrase-file", str(tmp_path / "pass"), rc=1)
    assert "exists already" in r.stderr
    assert (private.read_bytes(), public.read_bytes()) == before
    (tmp_path / "half.pub").write_text("mine")
    run_stacko(None, "generate-sigstore-key", "--output-prefix", str(tmp_path / "half"),
               "--passphrase-file", str(tmp_path / "pass"), rc=1)
    assert not (tmp_path / "half.private").exists()
    assert (tmp_path / "half.pub").read_text() == "mine"
    os.symlink(tmp_path / "target", tmp_path / "link.private")
    run_stacko(None, "generate-sigstore-key", "--output-prefix", str(tmp_path / "link"),
               "--passphrase-file", str(tmp_path / "pass"), rc=1)
    assert not (tmp_path / "target").exists() and not (tmp_path / "link.pub").exists()


def test_generate_sigstore_key_refusals(tmp_path: Path) -> None:
    # No terminal (setsid: no controlling one) and no --passphrase-file.
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    r = subprocess.run(["setsid", sys.executable, "-m", "stacko", "generate-sigstore-key",
                        "--output-prefix", str(tmp_path / "k")], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "no terminal" in r.stderr and "--passphrase-file" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_stacko(None, "generate-sigstore-key", "--output-prefix", str(tmp_path / "k"),
                   "--passphrase-file", str(tmp_path / "absent"), rc=1)
    assert "passphrase file" in r.stderr
    r = run_stacko(None, "generate-sigstore-key", "--output-prefix", str(tmp_path / "no/k"),
                   "--passphrase-file", "/dev/null", rc=1)
    assert "does not exist" in r.stderr
    run_stacko(None, "generate-sigstore-key", rc=2)
    assert sorted(os.listdir(tmp_path)) == []


def test_generate_sigstore_key_asks_twice_on_the_terminal(tmp_path: Path) -> None:
    """Typed on a pseudo-terminal: the two entries must agree; nothing is echoed."""
    import pty
    import subprocess
    import sys
    import time
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))

    def typed(prefix: str, first: str, second: str) -> tuple:
        leader, follower = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-c", "import os, sys, fcntl, termios; os.setsid(); "
             "fcntl.ioctl(0, termios.TIOCSCTTY, 0); from stacko.cli import main; "
             "sys.exit(main(sys.argv[1:]))", "generate-sigstore-key",
             "--output-prefix", str(tmp_path / prefix)],
            stdin=follower, stdout=follower, stderr=follower, env=env)
        os.close(follower)
        seen = b""

        def wait_for(text: bytes) -> None:
            nonlocal seen
            deadline = time.monotonic() + 60
            while text not in seen and time.monotonic() < deadline:
                try:
                    seen += os.read(leader, 4096)
                except OSError:
                    break
        wait_for(b"Passphrase")
        os.write(leader, first.encode() + b"\n")
        wait_for(b"again")
        os.write(leader, second.encode() + b"\n")
        status = proc.wait(timeout=60)
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        os.close(leader)
        return status, seen.decode(errors="replace")

    status, seen = typed("a", "typed secret", "typed secret")
    assert status == 0 and "typed secret" not in seen
    key = cosignkey.load_private((tmp_path / "a.private").read_bytes(), b"typed secret")
    assert key is not None
    status, seen = typed("b", "one", "two")
    assert status == 1 and "differ" in seen and not (tmp_path / "b.private").exists()


@pytest.mark.parametrize("module, package", [("cryptography", "cryptography"),
                                             ("nacl", "PyNaCl")])
def test_without_the_libraries_an_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch,
                                                        keypair: tuple, module: str,
                                                        package: str) -> None:
    import sys
    monkeypatch.setitem(sys.modules, module, None)       # import raises ImportError
    calls = [lambda: cosignkey.generate(PASS), lambda: cosignkey.load_private(keypair[0], PASS)]
    if module == "cryptography":           # checking needs no PyNaCl
        calls += [lambda: cosignkey.load_public(keypair[1]),
                  lambda: sigstore.verify(b"x", "AAAA", [keypair[1]])]
    for call in calls:
        with pytest.raises(StackoError) as e:
            call()
        assert package in e.value.message and "apt-get install python3-" in (e.value.hint or "")
    if module == "nacl":
        assert cosignkey.load_public(keypair[1]) is not None


# --- public keys without cryptography's serialization module -----------------------
def every_kind_of_key() -> list:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    return [ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()),
            ec.generate_private_key(ec.SECP521R1()),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            ed25519.Ed25519PrivateKey.generate()]


def test_public_keys_read_as_cryptography_reads_them() -> None:
    from cryptography.hazmat.primitives import serialization
    from stacko.signing import publickey
    for private in every_kind_of_key():
        public = private.public_key()
        spki = public.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        assert publickey.from_spki(spki).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == spki
        pem = public.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        payload = b"payload"
        key = cosignkey.load_private(cosignkey.pem_encode(cosignkey.SIGSTORE_LABEL,
                                     cosignkey.encrypt(private.private_bytes(
                                         serialization.Encoding.DER,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), PASS)), PASS)
        assert sigstore.verify(payload, sigstore.sign(payload, key), [pem])


def test_malformed_public_keys_are_refused(keypair: tuple) -> None:
    from stacko.signing import publickey
    _, der = cosignkey.pem_decode(keypair[1], cosignkey.PUBLIC_LABELS, "k")
    point = der[-65:]
    bad = [b"", der[:-1], der + b"\x00", b"\x30\x81" + der[1:],        # non-minimal length
           der.replace(bytes.fromhex("2a8648ce3d030107"), bytes.fromhex("2b8104000a")),  # k1
           der[:-65] + b"\x04" + bytes(64),                               # not on the curve
           der[:-66] + b"\x01" + point,                                   # unused bits
           der[:-65] + b"\x02" + point[1:33] + point[33:]]                # compressed, 65 long
    for data in bad:
        with pytest.raises(publickey.BadKey):
            publickey.from_spki(data)
        with pytest.raises(cosignkey.KeyUnreadable):
            cosignkey.load_public(cosignkey.pem_encode("PUBLIC KEY", data))


def test_public_key_parser_never_raises_anything_else(keypair: tuple) -> None:
    """Random damage to a real key: BadKey or a key, nothing else."""
    import random
    from stacko.signing import publickey
    _, der = cosignkey.pem_decode(keypair[1], cosignkey.PUBLIC_LABELS, "k")
    rng = random.Random(20)
    for _ in range(3000):
        data = bytearray(der)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            at = rng.randrange(len(data) + 1)
            if op == 0 and at < len(data):
                data[at] = rng.randrange(256)
            elif op == 1:
                data[at:at] = bytes([rng.randrange(256)])
            elif at < len(data):
                del data[at]
        try:
            publickey.from_spki(bytes(data))
        except publickey.BadKey:
            pass


def test_checking_a_signature_imports_no_serialization(keypair: tuple, tmp_path: Path) -> None:
    """What a pull under a sigstoreSigned policy pays for: cryptography's ECDSA,
    not its serialization module (SSH keys, dataclasses, inspect) nor PyNaCl."""
    import subprocess
    import sys
    key = cosignkey.load_private(keypair[0], PASS)
    payload = cosign_payload("h.example/r:t", DIGEST)
    (tmp_path / "pub").write_bytes(keypair[1])
    probe = ("import sys; from stacko.signing import sigstore; "
             f"assert sigstore.verify({payload!r}, {sigstore.sign(payload, key)!r}, "
             f"[open({str(tmp_path / 'pub')!r}, 'rb').read()]); "
             "print(' '.join(sorted(sys.modules)))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    modules = set(subprocess.run([sys.executable, "-c", probe], check=True, env=env,
                                 capture_output=True, text=True).stdout.split())
    assert "cryptography.hazmat.primitives.asymmetric.ec" in modules
    assert not {"cryptography.hazmat.primitives.serialization", "nacl", "dataclasses",
                "inspect"} & modules

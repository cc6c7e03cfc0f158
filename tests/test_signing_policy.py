"""The trust policy and the signature payload, without gpg or a registry:
strict parsing as containers/image parses, scopes, signedIdentity."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacko.signing import dockerref, identity, payload, policy, policyfile
from stacko.signing.policyfile import PolicyError

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


# --- payload ----------------------------------------------------------------------
def test_payload_round_trips_in_both_formats() -> None:
    for kind in payload.TYPES:
        data = payload.make("reg.example.com/app:v1", DIGEST, kind)
        doc = json.loads(data)
        assert doc["critical"] == {"identity": {"docker-reference": "reg.example.com/app:v1"},
                                   "image": {"docker-manifest-digest": DIGEST}, "type": kind}
        parsed = payload.parse(data, kind)
        assert (parsed.reference, parsed.digest) == ("reg.example.com/app:v1", DIGEST)
        other = payload.TYPES[1 - payload.TYPES.index(kind)]
        with pytest.raises(payload.InvalidPayload, match="unrecognized signature type"):
            payload.parse(data, other)


def crit(**over: object) -> dict:
    c = {"type": payload.GPG, "image": {"docker-manifest-digest": DIGEST},
         "identity": {"docker-reference": "r.io/a:b"}}
    c.update(over)
    return c


@pytest.mark.parametrize("doc, why", [
    ({"critical": crit()}, "'optional' missing"),
    ({"critical": crit(), "optional": None}, "optional null (GnuPG)"),
    ({"critical": crit(), "optional": {}, "x": 1}, "unknown top-level key"),
    ({"critical": crit(extra=1), "optional": {}}, "unknown critical key"),
    ({"critical": crit(image={"docker-manifest-digest": "sha256:abc"}), "optional": {}},
     "short digest"),
    ({"critical": crit(image={"docker-manifest-digest": DIGEST, "x": 1}), "optional": {}},
     "unknown image key"),
    ({"critical": crit(identity={}), "optional": {}}, "no docker-reference"),
    ({"critical": crit(identity={"docker-reference": 5}), "optional": {}}, "not a string"),
    ({"critical": crit(), "optional": {"timestamp": 1.5}}, "fractional timestamp"),
    ([], "not an object"),
])
def test_payload_is_parsed_strictly(doc: object, why: str) -> None:
    with pytest.raises(payload.InvalidPayload):
        payload.parse(json.dumps(doc).encode(), payload.GPG)


def test_payload_refuses_duplicate_keys_and_trailing_data() -> None:
    good = json.dumps({"critical": crit(), "optional": {}})
    assert payload.parse(good.encode(), payload.GPG).digest == DIGEST
    with pytest.raises(payload.InvalidPayload, match="duplicate"):
        payload.parse(good[:-1].encode() + b', "optional": {}}', payload.GPG)
    with pytest.raises(payload.InvalidPayload):
        payload.parse(good.encode() + b"{}", payload.GPG)


def test_sigstore_payload_may_have_null_optional() -> None:
    doc = {"critical": crit(type=payload.SIGSTORE), "optional": None}
    assert payload.parse(json.dumps(doc).encode(), payload.SIGSTORE).creator is None


# --- references and identities ----------------------------------------------------------
def test_references_are_normalised_as_docker_does() -> None:
    assert str(dockerref.parse_normalized("busybox")) == "docker.io/library/busybox"
    assert str(dockerref.parse_normalized("index.docker.io/x:1")) == "docker.io/library/x:1"
    assert str(dockerref.parse_normalized("127.0.0.1:5000/a/b:t")) == "127.0.0.1:5000/a/b:t"
    for bad in ("", "UPPER/x".lower() + "/Bad", "a" * 64, "host:5000/a:b:c"):
        with pytest.raises(dockerref.BadReference):
            dockerref.parse_normalized(bad)
    ref = dockerref.parse_normalized("reg.example.com:5000/ns/app:v1")
    assert dockerref.policy_identity(ref) == "reg.example.com:5000/ns/app:v1"
    assert dockerref.policy_namespaces(ref) == [
        "reg.example.com:5000/ns/app", "reg.example.com:5000/ns", "reg.example.com:5000",
        "*.example.com", "*.com"]


# split_reference reads a reference as re.fullmatch(dockerref.REFERENCE, …, re.ASCII)
# does, without compiling it: held to the pattern on references built from the
# grammar's pieces, right or slightly wrong, and on plain noise.
_PIECES = ["a", "z9", "0", "B", ".", "_", "__", "-", "--", "/", ":", "@", "5000", "[",
           "]", "::1", "fe80", "sha256", "+", "é", "٣", "\n", "x" * 40, "f" * 32,
           "A" * 31, "docker.io", "localhost"]


@given(st.one_of(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join),
                 st.text(alphabet="aZ09._-/:@[]+é", max_size=30)))
@settings(max_examples=3000, deadline=None, derandomize=True, database=None)
def test_split_reference_is_the_reference_pattern(text: str) -> None:
    import re
    m = re.fullmatch(dockerref.REFERENCE, text, re.ASCII)
    assert dockerref.split_reference(text) == (m.groups() if m else None)


def test_split_reference_on_references_of_each_kind() -> None:
    import re
    digest = "sha256:" + "0" * 64
    for text in ["docker.io/library/busybox", "reg.example.com:5000/ns/app:v1",
                 f"127.0.0.1:5000/a/b:t@{digest}", f"[fe80::1]:5000/x@{digest}",
                 "a/b__c/d--e.f_g:W_.-9", "x" * 300 + "/y", "a/b:" + "t" * 128,
                 "a/b:" + "t" * 129, "a/b:.t", "a/-b", "a/b-", "a/b___c", "-a.b/c",
                 "a.-b/c", "[]/c", "[z]/c", "a:/c", "a:5000x/c", f"a/b@{digest[:-33]}",
                 f"a/b@sha256+x.y_z-w:{'F' * 32}", f"a/b@1sha:{'f' * 32}",
                 f"a/b@s..a:{'f' * 32}", f"a/b@s--a:{'f' * 32}",
                 "a/b@", "a/b:", "A/b", "a/B", "a//b", "/a", "a/"]:
        m = re.fullmatch(dockerref.REFERENCE, text, re.ASCII)
        assert dockerref.split_reference(text) == (m.groups() if m else None), text


R = dockerref.parse_normalized
TAGGED = R("reg.io/ns/app:v1")
BY_DIGEST = R(f"reg.io/ns/app@{DIGEST}")


@pytest.mark.parametrize("match, intended, signed, ok", [
    (identity.DEFAULT, TAGGED, "reg.io/ns/app:v1", True),
    (identity.DEFAULT, TAGGED, "reg.io/ns/app:v2", False),
    (identity.DEFAULT, TAGGED, "reg.io/ns/other:v1", False),
    (identity.DEFAULT, TAGGED, "reg.io/ns/app", False),
    (identity.DEFAULT, BY_DIGEST, "reg.io/ns/app:anything", True),
    (identity.DEFAULT, BY_DIGEST, "reg.io/ns/other:v1", False),
    (identity.IdentityMatch("matchExact"), TAGGED, "reg.io/ns/app:v1", True),
    (identity.IdentityMatch("matchExact"), BY_DIGEST, "reg.io/ns/app:v1", False),
    (identity.IdentityMatch("matchRepository"), TAGGED, "reg.io/ns/app:v9", True),
    (identity.IdentityMatch("matchRepository"), TAGGED, "reg.io/ns/app", True),
    (identity.IdentityMatch("exactReference", "reg.io/x:1"), TAGGED, "reg.io/x:1", True),
    (identity.IdentityMatch("exactReference", "reg.io/x:1"), TAGGED, "reg.io/ns/app:v1", False),
    (identity.IdentityMatch("exactRepository", "reg.io/x"), TAGGED, "reg.io/x:7", True),
    (identity.IdentityMatch("remapIdentity", prefix="reg.io/ns", signed_prefix="up.io/team"),
     TAGGED, "up.io/team/app:v1", True),
    (identity.IdentityMatch("remapIdentity", prefix="reg.io/ns", signed_prefix="up.io/team"),
     TAGGED, "reg.io/ns/app:v1", False),
    (identity.IdentityMatch("remapIdentity", prefix="reg.io/n", signed_prefix="up.io/team"),
     TAGGED, "reg.io/ns/app:v1", True),          # no prefix match at a component: unchanged
    (identity.DEFAULT, TAGGED, "not a reference", False),
])
def test_signed_identity_as_containers_image(match: identity.IdentityMatch,
                                             intended: dockerref.Named, signed: str,
                                             ok: bool) -> None:
    assert identity.matches(match, intended, signed) is ok


# --- policy files -------------------------------------------------------------------------
def signed_by(**over: object) -> dict:
    req = {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}
    req.update(over)
    return req


def write(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "policy.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


@pytest.mark.parametrize("doc, message", [
    ("{", "not valid JSON"),
    ({}, "'default' missing"),
    ({"default": []}, "must not be empty"),
    ({"default": [{"type": "insecureAcceptAnything"}], "other": 1}, "unknown key 'other'"),
    ({"default": [{"type": "insecureAcceptAnything", "x": 1}]}, "unknown key 'x'"),
    ({"default": [{"type": "acceptEverything"}]}, "unknown policy requirement type"),
    ({"default": [{"type": "signedBaseLayer", "baseLayerIdentity": {}}]}, "not implemented"),
    ({"default": [signed_by(keyType="X509Certificates")]}, "not implemented"),
    ({"default": [signed_by(keyPaths=["/a"])]}, "exactly one of"),
    ({"default": [{"type": "signedBy", "keyType": "GPGKeys"}]}, "exactly one of"),
    ({"default": [signed_by(keyPath=None, keyPaths=[])][:1]}, "exactly one of|list"),
    ({"default": [signed_by(signedIdentity={"type": "matchEverything"})]}, "unknown policy "
                                                                            "reference match"),
    ({"default": [signed_by(signedIdentity={"type": "exactReference",
                                            "dockerReference": "reg.io/x"})]}, "neither a tag"),
    ({"default": [signed_by(signedIdentity={"type": "remapIdentity", "prefix": "-x",
                                            "signedPrefix": "reg.io"})]}, "prefix '-x'"),
    ({"default": [{"type": "sigstoreSigned", "fulcio": {}}]}, "not implemented"),
    ({"default": [{"type": "reject"}], "transports": {"docker": {"Bad Scope": [{
        "type": "reject"}]}}}, "not a docker scope"),
    ('{"default": [{"type": "reject"}], "default": [{"type": "reject"}]}', "duplicate key"),
    ('{"default": [{"type": "reject"}]} []', "not valid JSON"),
])
def test_unreadable_policies_are_errors(tmp_path: Path, doc: object, message: str) -> None:
    path = write(tmp_path, doc)
    with pytest.raises(PolicyError, match=message) as e:
        policyfile.load(path)
    assert path in e.value.message


def test_a_missing_policy_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the trust policy"):
        policyfile.load(str(tmp_path / "none.json"))


def test_the_most_specific_docker_scope_wins(tmp_path: Path) -> None:
    accept = [{"type": "insecureAcceptAnything"}]
    reject = [{"type": "reject"}]
    doc = {"default": reject, "transports": {"docker": {
        "reg.io": accept, "reg.io/ns": reject, "reg.io/ns/app:v1": accept,
        "*.example.com": accept, "": reject}, "docker-daemon": {"": accept}}}
    pol = policyfile.load(write(tmp_path, doc))
    for ref, scope in [("reg.io/ns/app:v1", "reg.io/ns/app:v1"), ("reg.io/ns/app:v2", "reg.io/ns"),
                       ("reg.io/x:1", "reg.io"), ("a.example.com:5000/x:1", "*.example.com"),
                       ("other.org/x:1", "")]:
        found, _ = policyfile.requirements_for(pol, R(ref))
        assert found == f'docker scope "{scope}"', ref


class NoSignatures:
    def gpg(self) -> list:
        return []

    def sigstore(self) -> list:
        return []


def test_accept_reject_and_no_signature(tmp_path: Path) -> None:
    key = tmp_path / "k.gpg"
    key.write_bytes(b"unused")
    doc = {"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {
        "reg.io/rejected": [{"type": "reject"}],
        "reg.io/signed": [signed_by(keyPath=str(key))],
        "reg.io/missing": [signed_by(keyPath=str(tmp_path / "nokey.gpg"))],
        "reg.io/inline": [signed_by(keyPath=None)]}}}
    del doc["transports"]["docker"]["reg.io/inline"][0]["keyPath"]
    doc["transports"]["docker"]["reg.io/inline"][0]["keyData"] = base64.b64encode(
        b"x").decode()
    pol = policyfile.load(write(tmp_path, doc))
    assert policy.evaluate(pol, "reg.io/any:1", DIGEST, NoSignatures()).accepted == ()
    with pytest.raises(policy.PolicyRefused, match="rejects") as e:
        policy.evaluate(pol, "reg.io/rejected:1", DIGEST, NoSignatures())
    assert e.value.reason == policy.REJECTED
    with pytest.raises(policy.PolicyRefused, match="no signature") as e:
        policy.evaluate(pol, "reg.io/signed:1", DIGEST, NoSignatures())
    assert e.value.reason == policy.NO_SIGNATURE

    class OneSignature(NoSignatures):
        def gpg(self) -> list:
            return [b"not even OpenPGP"]
    # A key file that holds no key is an error, never "accept".
    with pytest.raises(PolicyError, match="no GnuPG public key could be imported"):
        policy.evaluate(pol, "reg.io/signed:1", DIGEST, OneSignature())
    with pytest.raises(PolicyError, match="cannot read the key file"):
        policy.evaluate(pol, "reg.io/missing:1", DIGEST, NoSignatures())


def test_a_fifo_named_as_policy_or_key_is_refused_not_waited_for(tmp_path: Path) -> None:
    import os
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(PolicyError, match="not a regular file"):
        policyfile.load(str(fifo))
    pol = policyfile.load(write(tmp_path, {"default": [signed_by(keyPath=str(fifo))]}))
    with pytest.raises(PolicyError, match="not a regular file"):
        policy.evaluate(pol, "reg.io/a:b", DIGEST, NoSignatures())

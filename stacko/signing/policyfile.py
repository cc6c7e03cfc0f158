"""The trust policy file: containers-policy.json(5), the subset in the contract.

Parsed as strictly as containers/image parses it (signature/policy_config.go):
an unknown key, a key twice, a wrong type, an empty list of requirements or a
requirement type stacko does not implement is an error, never "accept".  The
requirements for an image come from the most specific ``docker`` scope
(``host/ns/repo:tag``, then the repository, its namespaces, the host,
``*.domain``), else ``transports.docker[""]``, else ``default``.  All of them
must hold; one good signature satisfies a signature requirement.
"""
from __future__ import annotations

import json
import re

from stacko.errors import StackoError
from stacko.records import record
from stacko.signing import identity as identity_mod
from stacko.signing.files import read_regular
from stacko.signing.dockerref import (DOMAIN, REFERENCE, Named, policy_identity,
                                      policy_namespaces)
from stacko.signing.identity import IdentityMatch

DEFAULT_PATH = "/etc/containers/policy.json"
MAX_POLICY = 4 << 20            # bytes of a policy file, and of a key file
ACCEPT = "insecureAcceptAnything"
REJECT = "reject"
SIGNED_BY = "signedBy"
SIGSTORE_SIGNED = "sigstoreSigned"
UNSUPPORTED = {"signedBaseLayer": "signedBaseLayer is not implemented by stacko"}
SIGSTORE_UNSUPPORTED = ("fulcio", "rekorPublicKeyPath", "rekorPublicKeyPaths",
                        "rekorPublicKeyData", "rekorPublicKeyDatas", "pki")


class PolicyError(StackoError):
    """The policy file cannot be read or used."""


@record
class Requirement:
    type: str
    key_type: str = ""                 # signedBy: GPGKeys
    key_paths: tuple = ()              # keyPath, or keyPaths
    key_data: tuple = ()               # keyData (bytes), or keyDatas
    identity: IdentityMatch = identity_mod.DEFAULT

    def describe(self) -> str:
        if self.type not in (SIGNED_BY, SIGSTORE_SIGNED):
            return self.type
        keys = ", ".join(self.key_paths) or f"{len(self.key_data)} inline key(s)"
        return f"{self.type} ({keys}; {self.identity.describe()})"


@record
class Policy:
    path: str
    default: tuple
    transports: dict          # transport -> {scope: (Requirement, ...)}


def _pairs(pairs: list) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise PolicyError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _constant(name: str) -> object:
    raise PolicyError(f"{name} is not JSON")


def load(path: str = DEFAULT_PATH) -> Policy:
    """The policy in path; PolicyError naming the file and what is wrong."""
    try:
        data = read_regular(path, MAX_POLICY)
    except OSError as e:
        raise PolicyError(f"cannot read the trust policy {path}: {e.strerror or e}",
                          hint="name a policy file with --policy FILE") from None
    if len(data) > MAX_POLICY:
        raise PolicyError(f"invalid policy in {path}: larger than {MAX_POLICY} bytes")
    return loads(data, path)


def loads(data: bytes, path: str = "<policy>") -> Policy:
    try:
        try:
            doc = json.loads(data.decode("utf-8"), object_pairs_hook=_pairs,
                             parse_constant=_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            if isinstance(e, PolicyError):
                raise
            raise PolicyError(f"not valid JSON: {e}") from None
        return _policy(doc, path)
    except PolicyError as e:
        raise PolicyError(f"invalid policy in {path}: {e.message}",
                          hint="see containers-policy.json(5); stacko refuses any policy "
                               "it cannot read entirely") from None


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise PolicyError(f"{where} is not a JSON object")
    return value


def _fields(value: object, where: str, required: tuple, allowed: tuple = ()) -> dict:
    obj = _object(value, where)
    for key in obj:
        if key not in required and key not in allowed:
            raise PolicyError(f"unknown key {key!r} in {where}")
    for key in required:
        if key not in obj:
            raise PolicyError(f"key {key!r} missing in {where}")
    return obj


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"{where} is not a string")
    return value


def _strings(value: object, where: str) -> tuple:
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where} is not a non-empty list of strings")
    return tuple(_string(v, f"an entry of {where}") for v in value)


def _key_data(value: object, where: str) -> bytes:
    import base64          # only for keyData: not loaded before a pull's manifest
    text = _string(value, where)
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise PolicyError(f"{where} is not base64") from None


def _policy(doc: object, path: str) -> Policy:
    top = _fields(doc, "the policy", ("default",), ("transports",))
    default = _requirements(top["default"], '"default"')
    transports: dict = {}
    for transport, scopes in _object(top.get("transports", {}), '"transports"').items():
        parsed = {}
        for scope, reqs in _object(scopes, f'transport "{transport}"').items():
            where = f'transport "{transport}" scope "{scope}"'
            if transport == "docker" and scope and not valid_docker_scope(scope):
                raise PolicyError(f"{where}: not a docker scope (HOST[:PORT][/REPO[:TAG|"
                                  "@DIGEST]] or *.DOMAIN)")
            parsed[scope] = _requirements(reqs, where)
        transports[transport] = parsed
    return Policy(path, default, transports)


def valid_docker_scope(scope: str) -> bool:
    if scope.startswith("*."):
        return bool(re.fullmatch(DOMAIN, scope[2:], re.ASCII)) and ":" not in scope
    first = scope.partition("/")[0]
    return bool(re.fullmatch(REFERENCE, scope, re.ASCII)) \
        and bool(re.fullmatch(DOMAIN, first, re.ASCII)) \
        and scope.lower().partition("/")[2] == scope.partition("/")[2]


def _requirements(value: object, where: str) -> tuple:
    if not isinstance(value, list):
        raise PolicyError(f"{where} is not a list of requirements")
    if not value:
        raise PolicyError(f"{where}: the list of requirements must not be empty")
    return tuple(_requirement(v, f"{where} requirement {n + 1}") for n, v in enumerate(value))


def _requirement(value: object, where: str) -> Requirement:
    kind = _string(_object(value, where).get("type"), f"{where}: \"type\"")
    if kind in (ACCEPT, REJECT):
        _fields(value, where, ("type",))
        return Requirement(kind)
    if kind in UNSUPPORTED:
        raise PolicyError(f"{where}: {UNSUPPORTED[kind]}")
    if kind == SIGNED_BY:
        obj = _fields(value, where, ("type", "keyType"),
                      ("keyPath", "keyPaths", "keyData", "signedIdentity"))
        key_type = _string(obj["keyType"], f"{where}: keyType")
        if key_type != "GPGKeys":
            raise PolicyError(f"{where}: keyType {key_type!r} is not implemented by stacko "
                              "(only GPGKeys)")
        sources = ("keyPath", "keyPaths", "keyData")
    elif kind == SIGSTORE_SIGNED:
        obj = _fields(value, where, ("type",), ("keyPath", "keyPaths", "keyData", "keyDatas",
                                                "signedIdentity") + SIGSTORE_UNSUPPORTED)
        for key in SIGSTORE_UNSUPPORTED:
            if key in obj:
                raise PolicyError(f"{where}: {key} is not implemented by stacko (only "
                                  "public keys: keyPath, keyPaths, keyData)")
        key_type = ""
        sources = ("keyPath", "keyPaths", "keyData", "keyDatas")
    else:
        raise PolicyError(f"{where}: unknown policy requirement type {kind!r}")
    given = [k for k in sources if k in obj]
    if len(given) != 1:
        raise PolicyError(f"{where}: exactly one of {', '.join(sources)} must be specified, "
                          f"{'none' if not given else ' and '.join(given)} present")
    source = given[0]
    paths: tuple = ()
    data: tuple = ()
    if source == "keyPath":
        paths = (_string(obj[source], f"{where}: keyPath"),)
    elif source == "keyPaths":
        paths = _strings(obj[source], f"{where}: keyPaths")
    elif source == "keyData":
        data = (_key_data(obj[source], f"{where}: keyData"),)
    else:
        if not isinstance(obj[source], list) or not obj[source]:
            raise PolicyError(f"{where}: keyDatas is not a non-empty list")
        data = tuple(_key_data(v, f"{where}: keyDatas") for v in obj[source])
    if any(not p for p in paths):
        raise PolicyError(f"{where}: an empty key path")
    match = identity_mod.DEFAULT
    if "signedIdentity" in obj:
        match = _identity(obj["signedIdentity"], f"{where}: signedIdentity")
    return Requirement(kind, key_type, paths, data, match)


def _identity(value: object, where: str) -> IdentityMatch:
    kind = _string(_object(value, where).get("type"), f"{where}: \"type\"")
    if kind not in identity_mod.FIELDS:
        raise PolicyError(f"{where}: unknown policy reference match type {kind!r}")
    needed = identity_mod.FIELDS[kind]
    obj = _fields(value, where, ("type",) + needed)
    fields = {k: _string(obj[k], f"{where}: {k}") for k in needed}
    try:
        return identity_mod.make(kind, fields)
    except ValueError as e:
        raise PolicyError(f"{where}: {e}") from None


def requirements_for(policy: Policy, ref: Named) -> tuple[str, tuple]:
    """(the scope that applies, described; its requirements) for a docker reference."""
    scopes = policy.transports.get("docker")
    if scopes is not None:
        for name in [policy_identity(ref)] + policy_namespaces(ref):
            if name in scopes:
                return f'docker scope "{name}"', scopes[name]
        if "" in scopes:
            return 'docker scope ""', scopes[""]
    return '"default"', policy.default


def read_keys(req: Requirement) -> list[bytes]:
    """The key material a requirement names; a file that cannot be read is an error."""
    keys = list(req.key_data)
    for path in req.key_paths:
        try:
            data = read_regular(path, MAX_POLICY)
        except OSError as e:
            raise PolicyError(f"cannot read the key file {path} that the trust policy names: "
                              f"{e.strerror or e}",
                              hint="the policy must name keys that exist; stacko never "
                                   "accepts an image it cannot check") from None
        if len(data) > MAX_POLICY or not data.strip():
            raise PolicyError(f"the key file {path} that the trust policy names is "
                              f"{'empty' if len(data) <= MAX_POLICY else 'too large'}")
        keys.append(data)
    return keys

"""containers-registries.d(5): where the lookaside of a repository is.

Every ``*.yaml`` file of the directory is read and merged (a namespace or
``default-docker`` given twice is an error, as in containers/image's
docker/registries_d.go).  For a reference, the most specific ``docker``
namespace (the same scopes as the policy's) that names a location wins, then
``default-docker``, then the built-in default.  For writing,
``lookaside-staging`` comes before ``lookaside`` (and the older ``sigstore``
names after each).

These files are YAML, but only a small part of it: nested block mappings of
scalars.  That part is read here, strictly (an unknown key, a list, an anchor
or a multi-line scalar is an error naming the file and line), rather than
pulling in a YAML library for a few lines of configuration.
"""
from __future__ import annotations

import os

from stacko.errors import StackoError
from stacko.records import record
from stacko.signing.files import read_regular
from stacko.signing.dockerref import Named, policy_identity, policy_namespaces

DEFAULT_DIR = "/etc/containers/registries.d"
ROOT_LOOKASIDE = "file:///var/lib/containers/sigstore"
USER_LOOKASIDE = ".local/share/containers/sigstore"
MAX_FILE = 1 << 20
NAMESPACE_KEYS = ("lookaside", "lookaside-staging", "sigstore", "sigstore-staging",
                  "use-sigstore-attachments")


class RegistriesDError(StackoError):
    pass


@record
class Config:
    default: dict | None        # default-docker
    docker: dict                # namespace -> its settings


# --- the YAML subset ------------------------------------------------------------------
def _scalar(text: str, where: str) -> object:
    if not text or text in ("~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text == "{}":
        return {}
    if text[0] == "'":
        if len(text) < 2 or text[-1] != "'" or "'" in text[1:-1].replace("''", ""):
            raise RegistriesDError(f"{where}: unterminated quoted string")
        return text[1:-1].replace("''", "'")
    if text[0] == '"':
        import json
        try:
            value = json.loads(text)
        except ValueError:
            raise RegistriesDError(f"{where}: a double-quoted string stacko cannot read") \
                from None
        if not isinstance(value, str):
            raise RegistriesDError(f"{where}: unterminated quoted string")
        return value
    if text[0] in "[{&*!|>%@`-?," or text.startswith(("- ", "? ")):
        raise RegistriesDError(f"{where}: {text[:40]!r}: stacko reads only mappings of plain "
                               "or quoted scalars in registries.d")
    return text


def _strip_comment(line: str) -> str:
    quote = ""
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def parse_yaml(text: str, name: str) -> dict:
    """Nested block mappings of scalars; RegistriesDError for anything else."""
    root: dict = {}
    stack: list = [(-1, root)]          # (indent, mapping)
    pending: tuple | None = None        # (indent, parent, key) awaiting a nested block
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"{name}, line {number}"
        line = _strip_comment(raw)
        if not line.strip() or (number == 1 and line.strip() == "---"):
            continue
        if "\t" in line[:len(line) - len(line.lstrip())]:
            raise RegistriesDError(f"{where}: a tab in the indentation")
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if body in ("---", "..."):
            raise RegistriesDError(f"{where}: more than one YAML document")
        if pending is not None:
            p_indent, parent, p_key = pending
            pending = None
            if indent > p_indent:
                parent[p_key] = {}
                stack.append((indent, parent[p_key]))
        while stack and indent < stack[-1][0]:
            stack.pop()
        if not stack or indent != stack[-1][0] and stack[-1][1]:
            raise RegistriesDError(f"{where}: indentation does not match any mapping above")
        if indent > stack[-1][0]:
            stack[-1] = (indent, stack[-1][1])
        mapping = stack[-1][1]
        key, value = _split_key(body, where)
        if key in mapping:
            raise RegistriesDError(f"{where}: key {key!r} is defined twice")
        if value == "":
            mapping[key] = None
            pending = (indent, mapping, key)
        else:
            mapping[key] = _scalar(value, where)
    return root


def _split_key(body: str, where: str) -> tuple:
    if body[0] in "'\"":
        end = body.find(body[0], 1)
        while end != -1 and body[0] == "'" and body[end + 1:end + 2] == "'":
            end = body.find("'", end + 2)
        if end == -1 or not body[end + 1:].startswith(":"):
            raise RegistriesDError(f"{where}: expected KEY: VALUE")
        key = _scalar(body[:end + 1], where)
        rest = body[end + 2:]
    else:
        cut = body.find(": ")
        if cut == -1 and body.endswith(":"):
            cut = len(body) - 1
        if cut <= 0:
            raise RegistriesDError(f"{where}: expected KEY: VALUE, found {body[:40]!r}")
        key = _scalar(body[:cut], where)
        rest = body[cut + 1:]
    if not isinstance(key, str):
        raise RegistriesDError(f"{where}: a key that is not a string")
    if rest and rest[0] not in " \t":
        raise RegistriesDError(f"{where}: expected a space after ':'")
    return key, rest.strip()


# --- the configuration ----------------------------------------------------------------
def _namespace(value: object, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RegistriesDError(f"{where} is not a mapping")
    for key, v in value.items():
        if key not in NAMESPACE_KEYS:
            raise RegistriesDError(f"{where}: unknown key {key!r}",
                                   hint="known: " + ", ".join(NAMESPACE_KEYS))
        if key == "use-sigstore-attachments":
            if not isinstance(v, bool):
                raise RegistriesDError(f"{where}: {key} is not true or false")
        elif v is not None and not isinstance(v, str):
            raise RegistriesDError(f"{where}: {key} is not a URL")
    return value


def load(directory: str = DEFAULT_DIR) -> Config:
    """The merged configuration of directory (empty when it does not exist)."""
    config = Config(None, {})
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".yaml"))
    except FileNotFoundError:
        return config
    except OSError as e:
        raise RegistriesDError(f"cannot read the registries.d directory {directory}: "
                               f"{e.strerror or e}") from None
    default_from = ""
    seen: dict = {}
    for name in names:
        path = os.path.join(directory, name)
        try:
            data = read_regular(path, MAX_FILE)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise RegistriesDError(f"cannot read {path}: {e.strerror or e}") from None
        if len(data) > MAX_FILE:
            raise RegistriesDError(f"{path} is larger than {MAX_FILE} bytes")
        try:
            doc = parse_yaml(data.decode("utf-8"), path)
        except UnicodeDecodeError:
            raise RegistriesDError(f"{path} is not UTF-8 text") from None
        for key in doc:
            if key not in ("default-docker", "docker"):
                raise RegistriesDError(f"{path}: unknown key {key!r}",
                                       hint="known: default-docker, docker")
        if doc.get("default-docker") is not None:
            if config.default is not None:
                raise RegistriesDError(f'"default-docker" is defined both in {default_from} '
                                       f"and {path}")
            config = config._replace(default=_namespace(doc["default-docker"],
                                                        f"{path}: default-docker"))
            default_from = path
        docker = doc.get("docker") or {}
        if not isinstance(docker, dict):
            raise RegistriesDError(f"{path}: docker is not a mapping of namespaces")
        for ns, value in docker.items():
            if ns in seen:
                raise RegistriesDError(f'"docker" namespace {ns!r} is defined both in '
                                       f"{seen[ns]} and {path}")
            seen[ns] = path
            config.docker[ns] = _namespace(value, f"{path}: docker: {ns}")
    return config


def _top_level(ns: dict, write: bool) -> str:
    keys = ("lookaside-staging", "sigstore-staging") if write else ()
    for key in keys + ("lookaside", "sigstore"):
        if ns.get(key):
            return ns[key]
    return ""


def lookaside_base(config: Config, ref: Named, write: bool = False) -> str:
    """The base URL of the lookaside for ref (for writing when write)."""
    for name in [policy_identity(ref)] + policy_namespaces(ref):
        if name in config.docker:
            found = _top_level(config.docker[name], write)
            if found:
                return found
    if config.default is not None:
        found = _top_level(config.default, write)
        if found:
            return found
    if os.geteuid() == 0:
        return ROOT_LOOKASIDE
    return "file://" + os.path.join(os.path.expanduser("~"), USER_LOOKASIDE)

"""Registry credentials: the command line's options, the auth files podman and
docker write, the password read once from stdin or a file, and the pieces of
HTTP authentication (challenges, Basic headers, tokens) checked before use.

A password is never put in a message, a log line or a child's argv: it lives
in ``Options.creds`` and in the Authorization headers built from it.
"""
from __future__ import annotations

import os
import sys

from stacko.errors import StackoError, UsageError
from stacko.quoting import quote
from stacko.records import record

MAX_PASSWORD = 64 << 10          # read from stdin or a file
# RFC 6750's b64token is [A-Za-z0-9._~+/-]+=*, and what registries' token
# services send (JWTs, mostly); any printable ASCII without spaces is taken, so
# that nothing can be smuggled into the request's headers.
MAX_TOKEN = 1 << 20


class RegistryError(StackoError):
    """The registry refused, or could not be reached."""


class Unauthorized(RegistryError):
    pass


@record
class Options:
    """How to reach a registry: the command line's auth and TLS options."""
    creds: str | None = None          # USER[:PASS]
    authfile: str | None = None
    cert_dir: str | None = None
    tls_verify: bool = True


def with_password(options: Options, password_stdin: bool = False,
                  password_file: str | None = None) -> Options:
    """options with the password of --password-stdin or --password-file read
    into creds, once, before anything is sent (as podman login reads it).
    The password is never on the command line, where `ps` shows it to all."""
    if not password_stdin and password_file is None:
        return options
    flag = "--password-stdin" if password_stdin else "--password-file"
    if password_stdin and password_file is not None:
        raise UsageError("--password-stdin and --password-file both give the password",
                         hint="give one of them")
    user, colon, _ = (options.creds or "").partition(":")
    if not user or colon:
        raise UsageError(f"{flag} needs --creds USER, the user alone",
                         hint=f"write --creds USER {flag}" + (" FILE" if password_file else ""))
    if password_stdin:
        if sys.stdin is None:
            raise RegistryError("--password-stdin: stacko has no stdin to read")
        data = read_bounded(sys.stdin.buffer, "stdin")
    else:
        try:
            with open(password_file, "rb") as f:  # type: ignore[arg-type]
                data = read_bounded(f, f"the password file {password_file}")
        except OSError as e:
            raise RegistryError(f"cannot read the password file {password_file}: "
                                f"{e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RegistryError(f"the password from {flag} is not UTF-8 text") from None
    # One line, as `echo PASS |` and podman login write and read it.
    password = text[:-1] if text.endswith("\n") else text
    password = password[:-1] if password.endswith("\r") else password
    if not password:
        raise RegistryError(f"{flag} gave an empty password")
    return options._replace(creds=f"{user}:{password}")  # type: ignore[attr-defined]


def read_bounded(f: object, what: str) -> bytes:
    data = f.read(MAX_PASSWORD + 1)  # type: ignore[attr-defined]
    if len(data) > MAX_PASSWORD:
        raise RegistryError(f"{what} holds more than {MAX_PASSWORD >> 10} KiB: not a password")
    return data


def auth_files(explicit: str | None) -> list[str]:
    """Where admins keep registry credentials, in the order podman reads them."""
    if explicit:
        return [explicit]
    found = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        found.append(os.environ["REGISTRY_AUTH_FILE"])
    # As containers/image reads them (podman, skopeo): without XDG_RUNTIME_DIR,
    # /run/containers/UID/auth.json, with no containers/ in between.
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    found.append(os.path.join(runtime, "containers", "auth.json") if runtime
                 else f"/run/containers/{os.getuid()}/auth.json")
    home = os.path.expanduser("~")
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    found.append(os.path.join(config, "containers", "auth.json"))
    found.append(os.path.join(home, ".docker", "config.json"))
    return found


def credentials(options: Options, host: str, repo: str) -> tuple[str, str] | None:
    """USER and PASS for host/repo: --creds, else the first auth file with an entry."""
    if options.creds is not None:
        user, colon, password = options.creds.partition(":")
        if not colon:
            password = ask_password(user, host)
        return user, password
    import json        # here, and base64 below: only a registry that asks for credentials
    for path in auth_files(options.authfile):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            if path == options.authfile:
                raise RegistryError(f"the auth file {quote(path)} does not exist") from None
            continue
        except (OSError, ValueError, RecursionError) as e:
            raise RegistryError(f"cannot read the auth file {quote(path)}: "
                                f"{getattr(e, 'strerror', None) or 'not JSON'}") from None
        entry = auth_entry(data.get("auths") if isinstance(data, dict) else None, host, repo)
        if entry is not None:
            return entry
    return None


def auth_entry(auths: object, host: str, repo: str) -> tuple[str, str] | None:
    """The most specific entry of an "auths" object: host/repo/… before host."""
    if not isinstance(auths, dict):
        return None
    best: tuple[int, tuple[str, str]] | None = None
    import base64
    for key, value in auths.items():
        if not isinstance(key, str) or not isinstance(value, dict):
            continue
        plain = key.split("://", 1)[-1].rstrip("/")
        if plain.endswith("/v1") or plain.endswith("/v2"):
            plain = plain[:-3]
        if plain != host and not f"{host}/{repo}/".startswith(plain + "/"):
            continue
        try:
            user, _, password = base64.b64decode(str(value.get("auth", ""))) \
                .decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            continue
        if user and (best is None or len(plain) > best[0]):
            best = (len(plain), (user, password))
    return best[1] if best else None


def ask_password(user: str, host: str) -> str:
    if not sys.stdin.isatty():
        raise RegistryError(f"--creds {user} gives no password, and there is no terminal "
                            "to ask for it",
                            hint=f"pipe it in: --creds {user} --password-stdin, or give "
                                 "--password-file FILE, or keep it in an auth file "
                                 "(`podman login --authfile FILE HOST`) and give "
                                 "--authfile FILE")
    import getpass
    return getpass.getpass(f"password for {user} at {host}: ")


def basic(creds: tuple[str, str]) -> str:
    """The Authorization header of Basic auth."""
    import base64
    value = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
    return "Basic " + value


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """'Bearer realm="…",service="…",scope="…"' -> ("bearer", {…})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    while rest:
        rest = rest.lstrip(" ,")
        key, eq, rest = rest.partition("=")
        if not eq:
            break
        if rest.startswith('"'):
            value, _, rest = rest[1:].partition('"')
        else:
            value, _, rest = rest.partition(",")
        params[key.strip().lower()] = value
    return scheme.lower(), params


def token_from(body: bytes, who: str) -> str:
    """The token in a token service's answer; refused unless it is one token that
    an Authorization header can carry (no CR, LF, spaces or other controls)."""
    import json
    try:
        data = json.loads(body.decode("utf-8"))
        token = data.get("token") or data["access_token"]
    except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
        raise RegistryError(f"{who} sent no token (its answer is not the JSON of one)") \
            from None
    # 1 to 65536 characters from ! to ~ (what [\x21-\x7e]{1,65536} matches)
    if not isinstance(token, str) or not 0 < len(token) <= 65536 or not token.isascii() \
            or not token.isprintable() or " " in token:
        raise RegistryError(f"{who} sent a token that is not a valid bearer token "
                            "(it is empty, too long, or holds spaces, line breaks or other "
                            "characters a token cannot have)")
    return token

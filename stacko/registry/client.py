"""A small client of the OCI distribution API, on the standard library.

One ``Client`` talks to one registry for one repository (and, when pushing,
the repositories it mounts blobs from).  It keeps one HTTP connection per
thread, answers the registry's 401 challenges (Basic, or Bearer with a token
from the realm the registry names), follows redirects to blob storage without
our credentials, and retries what fails for transient reasons (a refused or
reset connection, a timeout, 429 and 5xx) a bounded number of times, so that an
unreachable registry is given up on within a minute.  (http.client and ssl are
imported at the top: only pull-image and push-image import this module.)
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable

from stacko.errors import NotFound, StackoError
from stacko.records import record
from stacko.registry.ref import Reference

TIMEOUT = 12.0          # seconds, for connecting and for each read
ATTEMPTS = 4            # 4 × 12 s + the pauses stay under a minute
PAUSES = (0.5, 1.0, 2.0)
TRANSIENT = (429, 500, 502, 503, 504)
MAX_DOCUMENT = 16 << 20
USER_AGENT = "stacko"


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


# --- credentials -------------------------------------------------------------------
def auth_files(explicit: str | None) -> list[str]:
    """Where admins keep registry credentials, in the order podman reads them."""
    if explicit:
        return [explicit]
    found = []
    if os.environ.get("REGISTRY_AUTH_FILE"):
        found.append(os.environ["REGISTRY_AUTH_FILE"])
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/containers/{os.getuid()}"
    found.append(os.path.join(runtime, "containers", "auth.json"))
    home = os.path.expanduser("~")
    found.append(os.path.join(home, ".config", "containers", "auth.json"))
    found.append(os.path.join(home, ".docker", "config.json"))
    return found


def credentials(options: Options, host: str, repo: str) -> tuple[str, str] | None:
    """USER and PASS for host/repo: --creds, else the first auth file with an entry."""
    if options.creds is not None:
        user, colon, password = options.creds.partition(":")
        if not colon:
            password = ask_password(user, host)
        return user, password
    for path in auth_files(options.authfile):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            if path == options.authfile:
                raise RegistryError(f"the auth file {path} does not exist") from None
            continue
        except (OSError, ValueError) as e:
            raise RegistryError(f"cannot read the auth file {path}: {e}") from None
        entry = auth_entry(data.get("auths") if isinstance(data, dict) else None, host, repo)
        if entry is not None:
            return entry
    return None


def auth_entry(auths: object, host: str, repo: str) -> tuple[str, str] | None:
    """The most specific entry of an "auths" object: host/repo/… before host."""
    if not isinstance(auths, dict):
        return None
    best: tuple[int, tuple[str, str]] | None = None
    for key, value in auths.items():
        if not isinstance(key, str) or not isinstance(value, dict):
            continue
        plain = key.split("://", 1)[-1].rstrip("/")
        if plain.endswith("/v1") or plain.endswith("/v2"):
            plain = plain[:-3]
        if plain != host and not f"{host}/{repo}/".startswith(plain + "/"):
            continue
        try:
            user, _, password = base64.b64decode(value.get("auth", "")).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            continue
        if user and (best is None or len(plain) > best[0]):
            best = (len(plain), (user, password))
    return best[1] if best else None


def ask_password(user: str, host: str) -> str:
    if not sys.stdin.isatty():
        raise RegistryError(f"--creds {user} gives no password, and there is no terminal "
                            "to ask for it", hint="write --creds USER:PASS")
    import getpass
    return getpass.getpass(f"password for {user} at {host}: ")


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


# --- TLS ---------------------------------------------------------------------------
def cert_dirs(options: Options, host: str) -> list[str]:
    if options.cert_dir:
        return [options.cert_dir]
    # Where podman and docker look for a registry's CA by default.
    return [d for d in (f"/etc/containers/certs.d/{host}", f"/etc/docker/certs.d/{host}")
            if os.path.isdir(d)]


def tls_context(options: Options, host: str) -> ssl.SSLContext:
    if not options.tls_verify:
        context = ssl._create_unverified_context()
    else:
        context = ssl.create_default_context()
    for directory in cert_dirs(options, host):
        try:
            names = sorted(os.listdir(directory))
        except OSError as e:
            raise RegistryError(f"cannot read --cert-dir {directory}: {e.strerror}") from None
        for entry in names:
            path = os.path.join(directory, entry)
            try:
                if entry.endswith(".crt") and options.tls_verify:
                    context.load_verify_locations(cafile=path)
                elif entry.endswith(".cert"):     # a client certificate, with NAME.key
                    context.load_cert_chain(path, path[:-len(".cert")] + ".key")
            except (OSError, ssl.SSLError) as e:
                raise RegistryError(f"cannot load {path}: {e}") from None
    return context


# --- the client --------------------------------------------------------------------
class Response:
    """A response whose body the caller reads (blobs) or has read (documents)."""

    def __init__(self, raw: http.client.HTTPResponse, body: bytes | None = None,
                 drop: Callable[[], None] | None = None) -> None:
        self.raw = raw
        self.status: int = raw.status
        self.headers = raw.headers
        self.body = body
        self.drop = drop

    def read(self, n: int = -1) -> bytes:
        return self.raw.read(n)

    def close(self) -> None:
        if not self.raw.isclosed():
            # Closed before its end: the rest would arrive as the connection's next
            # response, so the connection goes too.
            self.raw.close()
            if self.drop is not None:
                self.drop()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    def __init__(self, ref: Reference, options: Options, push: bool = False) -> None:
        self.ref = ref
        self.options = options
        self.push = push
        self.host = ref.host
        self._scheme: str | None = None if not options.tls_verify else "https"
        self._local = threading.local()
        self._auth_lock = threading.Lock()
        self._auth: dict[str, str] = {}            # scope -> Authorization header
        self._creds: tuple[str, str] | None | bool = False    # False: not looked up yet
        self._context: ssl.SSLContext | None = None
        self.requests = 0

    # --- plumbing ------------------------------------------------------------------
    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = tls_context(self.options, self.host)
        return self._context

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        conn = pool.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(netloc, timeout=TIMEOUT, context=self._tls(),
                                                   blocksize=1 << 20)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=TIMEOUT, blocksize=1 << 20)
            pool[(scheme, netloc)] = conn
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        conn = getattr(self._local, "pool", {}).pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def scheme(self) -> str:
        """https; with --tls-verify=false, http when the registry speaks no TLS."""
        if self._scheme is None:
            try:
                self._send("https", self.host, "GET", "/v2/", {}, None).read()
                self._scheme = "https"
            except ssl.SSLError:
                self._drop("https", self.host)
                self._scheme = "http"
            except RegistryError as e:
                if "TLS" not in e.message:
                    raise
                self._scheme = "http"
        return self._scheme

    def _send(self, scheme: str, netloc: str, method: str, path: str,
              headers: dict[str, str], body: Callable[[], object] | None
              ) -> http.client.HTTPResponse:
        """One request, retried while the failure is transient; returns the raw
        response with its body unread."""
        last: BaseException | None = None
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(PAUSES[min(attempt - 1, len(PAUSES) - 1)])
            conn = self._connection(scheme, netloc)
            data = body() if body else None
            try:
                self.requests += 1
                conn.request(method, path, body=data,
                             headers={"User-Agent": USER_AGENT, **headers})
                response = conn.getresponse()
            except ssl.SSLCertVerificationError as e:
                self._drop(scheme, netloc)
                raise RegistryError(
                    f"the TLS certificate of {netloc} does not verify: {e.verify_message}",
                    hint="give the registry's CA certificate with --cert-dir DIR (DIR/ca.crt), "
                         "or skip verification with --tls-verify=false") from None
            except ssl.SSLError as e:
                self._drop(scheme, netloc)
                if scheme == "https" and self._scheme is None:
                    raise                       # the probe of scheme(): plain HTTP
                raise RegistryError(
                    f"TLS with {netloc} failed: {e.reason or e}",
                    hint="for a registry that speaks plain HTTP, pass --tls-verify=false"
                ) from None
            except (OSError, http.client.HTTPException) as e:
                self._drop(scheme, netloc)
                last = e
                continue
            finally:
                if hasattr(data, "close"):
                    data.close()
            if response.status in TRANSIENT and attempt + 1 < ATTEMPTS:
                response.read()
                last = RegistryError(f"HTTP {response.status} {response.reason}")
                continue
            return response
        reason = getattr(last, "strerror", None) or str(last) or type(last).__name__
        raise RegistryError(f"cannot reach the registry {netloc}: {reason} "
                            f"(gave up after {ATTEMPTS} attempts)",
                            hint="check the host name and port, and that the registry runs")

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: Callable[[], object] | None = None, scope: str | None = None,
                ok: tuple[int, ...] = (200,), stream: bool = False) -> Response:
        """A request to this registry (path: /v2/…, or a full URL it gave us)."""
        scheme, netloc = self.scheme(), self.host
        if "://" in path:
            url = urllib.parse.urlsplit(path)
            scheme, netloc = url.scheme, url.netloc
            path = urllib.parse.urlunsplit(("", "", url.path, url.query, ""))
        scope = scope or self.scope()
        headers = dict(headers or {})
        for hop in range(6):
            ours = netloc == self.host
            sent = dict(headers)
            if ours and scope in self._auth:
                sent["Authorization"] = self._auth[scope]
            raw = self._send(scheme, netloc, method, path, sent, body)
            if raw.status == 401 and ours and "Authorization" not in sent:
                challenge = raw.headers.get("WWW-Authenticate", "")
                raw.read()
                self.authenticate(challenge, scope)
                continue
            if raw.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
                raw.read()
                target = urllib.parse.urljoin(f"{scheme}://{netloc}{path}",
                                              raw.headers.get("Location", ""))
                url = urllib.parse.urlsplit(target)
                scheme, netloc = url.scheme, url.netloc
                path = urllib.parse.urlunsplit(("", "", url.path, url.query, ""))
                continue
            if raw.status not in ok:
                error = self.failure(raw, method, path)
                if not raw.isclosed():
                    self._drop(scheme, netloc)
                raise error
            if stream:
                return Response(raw, drop=lambda s=scheme, n=netloc: self._drop(s, n))
            return Response(raw, read_limited(raw))
        raise RegistryError(f"{self.host} redirected {path} too many times")

    def failure(self, raw: http.client.HTTPResponse, method: str, path: str) -> RegistryError:
        text = raw.read(1 << 16)
        detail = ""
        codes: list[str] = []
        try:
            errors = json.loads(text).get("errors") or []
            codes = [str(e.get("code")) for e in errors]
            detail = "; ".join(str(e.get("message") or e.get("code")) for e in errors)
        except (ValueError, AttributeError, TypeError, RecursionError):   # not what the API says
            detail = text[:200].decode("utf-8", "replace").strip()
        where = f"{self.host}/{self.ref.repo}"
        if raw.status == 401:
            return Unauthorized(f"{self.host} refused the credentials ({detail or 'unauthorized'})",
                                hint="give them with --creds USER:PASS or --authfile FILE "
                                     "(podman login writes one)")
        if raw.status == 403:
            return Unauthorized(f"{self.host} denies {method} {path}: {detail or 'forbidden'}",
                                hint="the credentials lack the right to do that")
        if raw.status == 404 or {"NAME_UNKNOWN", "MANIFEST_UNKNOWN"} & set(codes):
            return NotFound(f"{where} has no {path.rpartition('/')[2]!r} ({detail or 'not found'})",
                            hint="check the repository and the tag")
        return RegistryError(f"{self.host} answered {method} {path} with HTTP {raw.status} "
                             f"{raw.reason}" + (f": {detail}" if detail else ""))

    def scope(self, *more: str) -> str:
        actions = "pull,push" if self.push else "pull"
        return " ".join([f"repository:{self.ref.repo}:{actions}"] +
                        [f"repository:{repo}:pull" for repo in more])

    def authenticate(self, challenge: str, scope: str) -> None:
        kind, params = parse_challenge(challenge)
        with self._auth_lock:
            if self._creds is False:
                self._creds = credentials(self.options, self.host, self.ref.repo)
            creds = self._creds
            if kind == "basic":
                if creds is None:
                    raise Unauthorized(f"{self.host} needs credentials",
                                       hint="give them with --creds USER:PASS or --authfile FILE")
                user, password = creds  # type: ignore[misc]
                self._auth[scope] = "Basic " + base64.b64encode(
                    f"{user}:{password}".encode()).decode()
            elif kind == "bearer" and params.get("realm"):
                self._auth[scope] = "Bearer " + self.token(params, scope, creds)  # type: ignore[arg-type]
            else:
                raise RegistryError(f"{self.host} asks for an authentication stacko does not "
                                    f"speak: {challenge or '(no WWW-Authenticate header)'}")

    def token(self, params: dict[str, str], scope: str,
              creds: tuple[str, str] | None) -> str:
        """Ask the token service the registry named for a token for scope."""
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in scope.split(" ")]
        url = urllib.parse.urlsplit(params["realm"])
        if url.scheme not in ("http", "https") or not url.netloc:
            raise RegistryError(f"{self.host} names a token service stacko cannot use: "
                                f"{params['realm']!r}")
        path = (url.path or "/") + "?" + "&".join(
            ([url.query] if url.query else []) + [urllib.parse.urlencode(query)])
        headers = {}
        if creds is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{creds[0]}:{creds[1]}".encode()).decode()
        raw = self._send(url.scheme, url.netloc, "GET", path, headers, None)
        body = read_limited(raw)
        if raw.status in (401, 403):
            raise Unauthorized(f"the token service of {self.host} refused the credentials",
                               hint="give them with --creds USER:PASS or --authfile FILE")
        if raw.status != 200:
            raise RegistryError(f"the token service of {self.host} answered HTTP {raw.status}")
        try:
            data = json.loads(body)
            return str(data.get("token") or data["access_token"])
        except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
            raise RegistryError(f"the token service of {self.host} sent no token") from None

    # --- the distribution API ---------------------------------------------------------
    def manifest(self, reference: str, accept: tuple[str, ...]) -> tuple[bytes, str]:
        """The manifest or index named by a tag or digest, and its media type."""
        r = self.request("GET", f"/v2/{self.ref.repo}/manifests/{reference}",
                         {"Accept": ", ".join(accept)})
        media = (r.headers.get("Content-Type") or "").split(";")[0].strip()
        return r.body or b"", media

    def blob(self, digest: str) -> Response:
        """A blob's content, to be read as a stream."""
        return self.request("GET", f"/v2/{self.ref.repo}/blobs/{digest}", stream=True)

    def blob_bytes(self, digest: str) -> bytes:
        return self.request("GET", f"/v2/{self.ref.repo}/blobs/{digest}").body or b""

    def has_blob(self, digest: str) -> bool:
        r = self.request("HEAD", f"/v2/{self.ref.repo}/blobs/{digest}", ok=(200, 404))
        return r.status == 200

    def mount_blob(self, digest: str, source_repo: str) -> bool:
        """Ask the registry to link a blob it holds in source_repo: True when done."""
        query = urllib.parse.urlencode({"mount": digest, "from": source_repo})
        r = self.request("POST", f"/v2/{self.ref.repo}/blobs/uploads/?{query}",
                         scope=self.scope(source_repo), ok=(201, 202))
        if r.status == 202:         # not mounted: end the upload session it opened
            location = r.headers.get("Location")
            if location:
                try:
                    self.request("DELETE", self.absolute(location), ok=(200, 202, 204, 404))
                except RegistryError:
                    pass
        return r.status == 201

    def upload_blob(self, digest: str, size: int, open_data: Callable[[], object]) -> None:
        """A monolithic upload: POST for a session, then PUT the whole blob."""
        start = self.request("POST", f"/v2/{self.ref.repo}/blobs/uploads/", ok=(202,))
        location = start.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.host} opened an upload without a Location")
        url = self.absolute(location)
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"digest": digest})
        self.request("PUT", url, {"Content-Type": "application/octet-stream",
                                  "Content-Length": str(size)}, body=open_data, ok=(201,))

    def put_manifest(self, reference: str, body: bytes, media_type: str) -> str:
        r = self.request("PUT", f"/v2/{self.ref.repo}/manifests/{reference}",
                         {"Content-Type": media_type, "Content-Length": str(len(body))},
                         body=lambda: body, ok=(201,))
        return r.headers.get("Docker-Content-Digest") or ""

    def absolute(self, location: str) -> str:
        return urllib.parse.urljoin(f"{self.scheme()}://{self.host}/", location)


def read_limited(raw: http.client.HTTPResponse) -> bytes:
    data = raw.read(MAX_DOCUMENT + 1)
    if len(data) > MAX_DOCUMENT:
        raise RegistryError(f"a document from the registry is larger than "
                            f"{MAX_DOCUMENT >> 20} MiB")
    return data

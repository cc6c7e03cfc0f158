"""A small client of the OCI distribution API, on the standard library.

One ``Client`` talks to one registry for one repository (and, when pushing,
the repositories it mounts blobs from).  It keeps one HTTP connection per
thread, answers the registry's 401 challenges (Basic, or Bearer with a token
from the realm the registry names), follows redirects to blob storage without
our credentials, and retries what fails for transient reasons (a refused or
reset connection, a timeout, 429 and 5xx) a bounded number of times, so that an
unreachable registry is given up on within a minute.  Every read is bounded in
bytes and time (``transport``).  Credentials go to the registry and to the
token service it names, and to nothing else: never to a redirect target, never
over plain HTTP once TLS is verified, and an https registry never leads to
http.  HTTP is http1.py's; ssl is imported only for a connection that speaks
TLS (a look at a plain HTTP registry with --tls-verify=false loads none).
"""
from __future__ import annotations

import os
import time

from stacko.errors import NotFound, StackoError
from stacko.lean import allocate_lock, get_ident, parse_json  # threading's core: ~1 ms less
from stacko.registry.auth import (MAX_TOKEN, Options, RegistryError, Unauthorized, auth_entry,
                                  basic, credentials, parse_challenge, token_from)
from stacko.quoting import quote
from stacko.registry.ref import Reference
from stacko.registry.http1 import Connection, UnsafeRequest
from stacko.registry.transport import (ERROR_BODY, MAX_DOCUMENT, TIMEOUT_VARIABLE, Expired, Meter,
                                       Response, describe, join_url, limits, origin, parse_url,
                                       query, shown, speaks_plain_http, tls_error, transient,
                                       unknown_name, unverified)

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    import ssl
    from collections.abc import Callable

ATTEMPTS = 4            # 4 × 12 s + the pauses stay under a minute
PAUSES = (0.5, 1.0, 2.0)
TRANSIENT = (429, 500, 502, 503, 504)
REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "stacko"

__all__ = ["Client", "Options", "RegistryError", "Response", "Unauthorized", "auth_entry",
           "parse_challenge", "MAX_DOCUMENT"]


# --- TLS ---------------------------------------------------------------------------
def cert_dirs(options: Options, host: str) -> list[str]:
    if options.cert_dir:
        return [options.cert_dir]
    # Where podman and docker look for a registry's CA by default.
    return [d for d in (f"/etc/containers/certs.d/{host}", f"/etc/docker/certs.d/{host}")
            if os.path.isdir(d)]


def tls_context(options: Options, host: str) -> ssl.SSLContext:
    import ssl
    if not options.tls_verify:
        context = ssl._create_unverified_context()
    else:
        context = ssl.create_default_context()
    for directory in cert_dirs(options, host):
        try:
            names = sorted(os.listdir(directory))
        except OSError as e:
            raise RegistryError(f"cannot read --cert-dir {quote(directory)}: {e.strerror}") from None
        for entry in names:
            path = os.path.join(directory, entry)
            try:
                if entry.endswith(".crt") and options.tls_verify:
                    context.load_verify_locations(cafile=path)
                elif entry.endswith(".cert"):     # a client certificate, with NAME.key
                    context.load_cert_chain(path, path[:-len(".cert")] + ".key")
            except (OSError, ssl.SSLError) as e:
                raise RegistryError(f"cannot load {quote(path)}: {e}") from None
    return context


class Client:
    def __init__(self, ref: Reference, options: Options, push: bool = False) -> None:
        self.ref = ref
        self.options = options
        self.push = push
        self.host = ref.host
        self.deadline, self.silence = limits()
        self._scheme: str | None = None if not options.tls_verify else "https"
        self._pools: dict[int, dict] = {}           # a thread's id -> its connections
        self._auth_lock = allocate_lock()
        self._auth: dict[str, str] = {}            # scope -> Authorization header
        self._creds: tuple[str, str] | None | bool = False    # False: not looked up yet
        self._context: ssl.SSLContext | None = None
        self.requests = 0

    # --- plumbing ------------------------------------------------------------------
    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = tls_context(self.options, self.host)
        return self._context

    def _connection(self, scheme: str, netloc: str) -> Connection:
        pool = self._pools.setdefault(get_ident(), {})
        conn = pool.get((scheme, netloc))
        if conn is None:
            conn = Connection(netloc, timeout=self.silence, blocksize=1 << 20,
                              context=self._tls() if scheme == "https" else None)
            pool[(scheme, netloc)] = conn
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        conn = self._pools.get(get_ident(), {}).pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def scheme(self) -> str:
        """https; with --tls-verify=false, http when the registry speaks no TLS."""
        if self._scheme is None and speaks_plain_http(self.host, self.silence):
            self._scheme = "http"       # what the probe below finds, without ssl
        if self._scheme is None:
            try:
                self._send("https", self.host, "GET", "/v2/", {}, None,
                           f"the registry {self.host}").discard()
                self._scheme = "https"
            except RegistryError as e:
                if "TLS" not in e.message:
                    raise
                self._scheme = "http"
            except OSError as e:
                if not tls_error(e):
                    raise
                self._drop("https", self.host)
                self._scheme = "http"
        return self._scheme

    def is_registry(self, scheme: str, netloc: str) -> bool:
        """Whether (scheme, netloc) is the registry itself, where its credentials go."""
        return origin(scheme, netloc) == origin(self.scheme(), self.host)

    def _send(self, scheme: str, netloc: str, method: str, path: str,
              headers: dict[str, str], body: Callable[[], object] | None, who: str,
              meanwhile: Callable[[], None] | None = None) -> Response:
        """One request, retried while the failure is transient; returns the
        response with its body unread.  who names the server in messages.
        meanwhile, once the first request is sent, runs while the server
        answers (the answer waits in the socket); it must not raise, or its
        OSError would read as the network's (pullsign.Checker.prepare catches
        all)."""
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
                if meanwhile is not None:
                    work, meanwhile = meanwhile, None
                    work()
                meter = conn.meter = Meter(self.deadline, self.silence)
                raw = conn.getresponse()
            except UnsafeRequest as e:
                self._drop(scheme, netloc)
                raise RegistryError(f"stacko refuses to send {method} {shown(path)} to {who}: "
                                    f"{e}") from None
            except Expired:
                self._drop(scheme, netloc)
                raise RegistryError(f"{who} did not answer {method} {shown(path)} within "
                                    f"{self.deadline:g} s",
                                    hint=f"on a slow link, give it longer with "
                                         f"{TIMEOUT_VARIABLE}=SECONDS") from None
            except (OSError, ValueError) as e:
                self._drop(scheme, netloc)
                reason = unverified(e)
                if reason is not None:
                    raise RegistryError(
                        f"the TLS certificate of {who} does not verify: {reason}",
                        hint="give the registry's CA certificate with --cert-dir DIR "
                             "(DIR/ca.crt), or skip verification with --tls-verify=false"
                    ) from None
                if tls_error(e):
                    if scheme == "https" and self._scheme is None:
                        raise                       # the probe of scheme(): plain HTTP
                    raise RegistryError(
                        f"TLS with {who} failed: {getattr(e, 'reason', None) or e}",
                        hint="for a registry that speaks plain HTTP, pass --tls-verify=false"
                    ) from None
                if unknown_name(e):
                    raise RegistryError(f"cannot reach {who}: its host name does not resolve "
                                        f"({describe(e)})",
                                        hint="check the host name, /etc/hosts and the name "
                                             "servers in /etc/resolv.conf") from None
                if not transient(e):
                    raise RegistryError(f"{who} sent an answer to {method} {shown(path)} "
                                        f"that is not valid HTTP: {describe(e)}") from None
                last = e
                continue
            finally:
                if hasattr(data, "close"):
                    data.close()
            response = Response(raw, meter, who, lambda: self._drop(scheme, netloc))
            if response.status in TRANSIENT and attempt + 1 < ATTEMPTS:
                response.discard()
                last = RegistryError(f"HTTP {response.status} {response.reason}")
                continue
            return response
        reason = describe(last) if last is not None else "?"
        raise RegistryError(f"cannot reach {who}: {reason} (gave up after {ATTEMPTS} attempts)",
                            hint="check the host name and port, and that the registry runs")

    def target(self, url: str, what: str, scheme: str) -> tuple[str, str, str, str]:
        """(scheme, netloc, path, who) of a URL the registry sent us to, from a
        connection by scheme; https never leads to http while TLS is verified."""
        to_scheme, netloc, path = parse_url(url, f"{what} named by {self.host}")
        if scheme == "https" and to_scheme == "http" and self.options.tls_verify:
            raise RegistryError(f"the registry {self.host} sent stacko from https to plain "
                                f"HTTP ({shown(url)}); refused, since TLS is verified",
                                hint="the registry is misconfigured, or someone is tampering "
                                     "with the connection")
        who = f"the registry {self.host}" if self.is_registry(to_scheme, netloc) \
            else f"{what} {netloc}"
        return to_scheme, netloc, path, who

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: Callable[[], object] | None = None, scope: str | None = None,
                ok: tuple[int, ...] = (200,), stream: bool = False,
                meanwhile: Callable[[], None] | None = None) -> Response:
        """A request to this registry (path: /v2/…, or a full URL it gave us);
        meanwhile: see _send."""
        scheme, netloc, who = self.scheme(), self.host, f"the registry {self.host}"
        if "://" in path:
            scheme, netloc, path, who = self.target(path, "the upload location", scheme)
        scope = scope or self.scope()
        headers = dict(headers or {})
        for hop in range(6):
            ours = self.is_registry(scheme, netloc)
            sent = dict(headers)
            if ours and scope in self._auth:
                sent["Authorization"] = self._auth[scope]
            r = self._send(scheme, netloc, method, path, sent, body, who, meanwhile)
            meanwhile = None
            if r.status == 401 and ours and "Authorization" not in sent:
                challenge = r.headers.get("WWW-Authenticate") or ""
                r.discard()
                self.authenticate(challenge, scope)
                continue
            if r.status in REDIRECTS and method in ("GET", "HEAD"):
                location = r.headers.get("Location") or ""
                r.discard()
                url = join_url(f"{scheme}://{netloc}{path}", location,
                               f"the redirect target named by {netloc}")
                scheme, netloc, path, who = self.target(url, "the redirect target", scheme)
                continue
            if r.status not in ok:
                error = self.failure(r, method, path)
                r.close()
                raise error
            if stream:
                r.meter.stream()
                return r
            r.body = r.read_all(MAX_DOCUMENT, f"the answer to {method} {shown(path)}")
            return r
        raise RegistryError(f"{self.host} redirected {shown(path)} too many times")

    def failure(self, r: Response, method: str, path: str) -> StackoError:
        text = r.read_some(ERROR_BODY)
        detail = ""
        codes: list[str] = []
        try:
            errors = parse_json(text.decode("utf-8")).get("errors") or []  # type: ignore[attr-defined]
            codes = [str(e.get("code")) for e in errors]
            detail = "; ".join(str(e.get("message") or e.get("code")) for e in errors)
        except (ValueError, AttributeError, TypeError, RecursionError):   # not what the API says
            detail = text[:200].decode("utf-8", "replace").strip()
        detail = shown(detail)[1:-1] if detail else ""
        who, where = r.who, f"{self.host}/{self.ref.repo}"
        if r.status == 401:
            return Unauthorized(f"{who} refused the credentials ({detail or 'unauthorized'})",
                                hint="give them with --creds USER --password-stdin, or "
                                     "--authfile FILE (podman login writes one)")
        if r.status == 403:
            return Unauthorized(f"{who} denies {method} {shown(path)}: {detail or 'forbidden'}",
                                hint="the credentials lack the right to do that")
        if r.who.startswith("the registry ") and \
                (r.status == 404 or {"NAME_UNKNOWN", "MANIFEST_UNKNOWN"} & set(codes)):
            return NotFound(f"{where} has no {shown(path.rpartition('/')[2])} "
                            f"({detail or 'not found'})", hint="check the repository and the tag")
        return RegistryError(f"{who} answered {method} {shown(path)} with HTTP {r.status} "
                             f"{shown(r.reason)[1:-1]}" + (f": {detail}" if detail else ""))

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
                                       hint="give them with --creds USER --password-stdin, "
                                            "or --authfile FILE")
                self._auth[scope] = basic(creds)  # type: ignore[arg-type]
            elif kind == "bearer" and params.get("realm"):
                self._auth[scope] = "Bearer " + self.token(params, scope, creds)  # type: ignore[arg-type]
            else:
                raise RegistryError(f"{self.host} asks for an authentication stacko does not "
                                    f"speak: {shown(challenge or '(no WWW-Authenticate header)')}")

    def token(self, params: dict[str, str], scope: str,
              creds: tuple[str, str] | None) -> str:
        """Ask the token service the registry named for a token for scope."""
        pairs = [("service", params["service"])] if params.get("service") else []
        pairs += [("scope", s) for s in scope.split(" ")]
        scheme, netloc, path = parse_url(params["realm"],
                                         f"the token service named by {self.host}")
        if scheme == "http" and self.scheme() == "https":
            raise RegistryError(f"{self.host} names a token service on plain HTTP "
                                f"({shown(params['realm'])}); refused, since the credentials "
                                "would cross the network in clear",
                                hint="the registry's token realm must be an https URL")
        path += ("&" if "?" in path else "?") + query(pairs)
        headers = {"Authorization": basic(creds)} if creds is not None else {}
        who = f"the token service {netloc}"
        r = self._send(scheme, netloc, "GET", path, headers, None, who)
        if r.status in (401, 403):
            r.discard()
            raise Unauthorized(f"{who} (of {self.host}) refused the credentials",
                               hint="give them with --creds USER --password-stdin, "
                                    "or --authfile FILE")
        if r.status != 200:
            r.discard()
            raise RegistryError(f"{who} (of {self.host}) answered HTTP {r.status}")
        return token_from(r.read_all(MAX_TOKEN, "its token"), who)

    # --- the distribution API ---------------------------------------------------------
    def manifest(self, reference: str, accept: tuple[str, ...],
                 meanwhile: Callable[[], None] | None = None) -> tuple[bytes, str]:
        """The manifest or index named by a tag or digest, and its media type;
        meanwhile runs while the registry answers (request)."""
        r = self.request("GET", f"/v2/{self.ref.repo}/manifests/{reference}",
                         {"Accept": ", ".join(accept)}, meanwhile=meanwhile)
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

    def upload_blob(self, digest: str, size: int, open_data: Callable[[], object]) -> None:
        """A monolithic upload: POST for a session, then PUT the whole blob."""
        start = self.request("POST", f"/v2/{self.ref.repo}/blobs/uploads/", ok=(202,))
        location = start.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.host} opened an upload without a Location")
        url = self.absolute(location)
        url += ("&" if "?" in url else "?") + query([("digest", digest)])
        self.request("PUT", url, {"Content-Type": "application/octet-stream",
                                  "Content-Length": str(size)}, body=open_data, ok=(201,))

    def put_manifest(self, reference: str, body: bytes, media_type: str) -> str:
        r = self.request("PUT", f"/v2/{self.ref.repo}/manifests/{reference}",
                         {"Content-Type": media_type, "Content-Length": str(len(body))},
                         body=lambda: body, ok=(201,))
        return r.headers.get("Docker-Content-Digest") or ""

    def absolute(self, location: str) -> str:
        return join_url(f"{self.scheme()}://{self.host}/", location, "the upload location")


"""What moved, and push asking the registry first (issue 21).

pull-image and push-image print one summary line on stderr and, with -v, one
line per blob; push contacts the registry before it packs anything and packs
only the layers the registry lacks and cannot mount.  What was packed is read
from -v ("packed NAME as …"); what travelled from the registry's log."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Dict, Iterator

import pytest

from conftest import Runner, populate, snapshot
from ocigen import d, f, write_layout
from registryd import Registry, available, skopeo_push
from registryfix import registry  # noqa: F401  (the fixture)

from stacko.moved import Tally, size_text

needs_registry = pytest.mark.skipif(
    not (available() and shutil.which("skopeo")),
    reason="docker-registry and skopeo are needed (tests/install-deps.sh)")

BASE = [d("etc"), f("etc/os-release", b"ID=moved\n"), f("etc/big", b"b" * 60000)]
MIDDLE = [d("usr"), f("usr/lib", b"l" * 30000)]


def top(version: str) -> list:
    return [d("srv"), f("srv/version", version.encode())]


SIZE = r"[\d.]+ (?:B|kB|MB)"


def summary(stderr: str) -> str:
    lines = [line for line in stderr.splitlines()
             if re.match(r"stacko: (pulled|pushed) \d+ of", line)]
    assert len(lines) == 1, stderr
    return lines[0]


def packed(stderr: str) -> list:
    return re.findall(r"^stacko: packed (\S+) as", stderr, re.M)


# --- no root, no registry ----------------------------------------------------------------
def test_a_log_line_is_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """push-image's threads log at once (uploads, the config): each line must
    reach stderr in one write, or two lines can run into each other."""
    import io
    import sys

    from stacko import log
    writes: list = []

    class Recorder(io.StringIO):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)
    monkeypatch.setattr(sys, "stderr", Recorder())
    log.log("stacko: uploaded sha256:aa (1 B)")
    assert writes == ["stacko: uploaded sha256:aa (1 B)\n"]


def test_sizes_and_summaries_read_as_a_person_writes_them() -> None:
    assert [size_text(n) for n in (0, 999, 1000, 1_049_000, 3_200_000_000)] == \
        ["0 B", "999 B", "1.0 kB", "1.0 MB", "3.2 GB"]
    pull = Tally("pulled")
    pull.layers = 3
    pull.note("fetched", "sha256:aa", 1_000_000)
    pull.note("reused", "sha256:bb", 5)
    pull.note("reused", "sha256:cc", None)
    assert pull.summary() == "stacko: pulled 1 of 3 layers, 1.0 MB, 2 reused"
    push = Tally("pushed")
    push.layers = 3
    push.note("uploaded", "sha256:aa", 1_000_000)
    push.note("skipped", "sha256:bb", 5)
    push.note("mounted", "sha256:cc", 5)
    push.note("uploaded", "sha256:dd", 700, layer=False)        # the config: not a layer
    assert push.summary() == "stacko: pushed 1 of 3 layers, 1.0 MB, 1 already there, 1 mounted"


# --- against a registry ------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    base = tmp_path_factory.mktemp("moved")
    layouts = {}
    for version in ("v1", "v2"):
        layout = base / version
        write_layout(layout, [BASE, MIDDLE, top(version)], ref=version)
        skopeo_push(registry, f"oci:{layout}:{version}", f"moved:{version}")
        layouts[version] = layout
    return layouts


def layer_digests(layout: Path) -> list:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" /
                           index["manifests"][0]["digest"][7:]).read_text())
    return [layer["digest"] for layer in manifest["layers"]]


@needs_registry
@pytest.mark.mounts
def test_pull_says_what_moved(stacko: Runner, registry: Registry,
                              app: Dict[str, Path]) -> None:
    r = stacko("pull-image", "one", f"{registry.host}/moved:v1", "--tls-verify=false")
    assert r.out == ""
    assert re.fullmatch(rf"stacko: pulled 3 of 3 layers, {SIZE}, 0 reused", summary(r.stderr))
    r = stacko("-v", "pull-image", "two", f"{registry.host}/moved:v2", "--tls-verify=false")
    assert r.out == ""
    assert "rm -rf" not in r.stderr      # the emptied staging directory goes without rm
    assert re.fullmatch(rf"stacko: pulled 1 of 3 layers, {SIZE}, 2 reused", summary(r.stderr))
    bottom, middle, changed = layer_digests(app["v2"])
    assert re.search(rf"^stacko: fetched {changed} \({SIZE}\)$", r.stderr, re.M), r.stderr
    for digest in (bottom, middle):
        assert re.search(rf"^stacko: reused {digest} \({SIZE}\): image '?one\.layer-\d'? "
                         "has it$", r.stderr, re.M), r.stderr


def made(stacko: Runner) -> None:
    populate(stacko, "base", {"etc/os-release": "ID=base\n", "bin/sh": "#!" + "s" * 4000})
    populate(stacko, "web", {"srv/index.html": "hello\n"}, parent="base")


@needs_registry
@pytest.mark.mounts
def test_push_says_what_moved_and_packs_only_what_the_registry_lacks(
        stacko: Runner, registry: Registry) -> None:
    made(stacko)
    ref = f"{registry.host}/said/web:1"
    r = stacko("-v", "push-image", "web", ref, "--tls-verify=false")
    assert r.out == ""
    assert re.fullmatch(rf"stacko: pushed 2 of 2 layers, {SIZE}, 0 already there, 0 mounted",
                        summary(r.stderr))
    assert packed(r.stderr) == ["base", "web"]
    assert len(re.findall(r"^stacko: uploaded sha256:[0-9a-f]{64} \(", r.stderr, re.M)) == 3
    # Again: the digests are remembered, so nothing is packed and nothing sent.
    mark = registry.mark()
    r = stacko("-v", "push-image", "web", ref, "--tls-verify=false")
    assert summary(r.stderr) == "stacko: pushed 0 of 2 layers, 0 B, 2 already there, 0 mounted"
    assert packed(r.stderr) == [] and registry.blob_puts(mark) == []
    # Another repository of the same registry: mounted, still nothing packed.
    mark = registry.mark()
    r = stacko("-v", "push-image", "web", f"{registry.host}/said/other:1", "--tls-verify=false")
    assert summary(r.stderr) == "stacko: pushed 0 of 2 layers, 0 B, 0 already there, 2 mounted"
    assert packed(r.stderr) == [] and registry.blob_puts(mark) == []
    assert re.search(r"^stacko: mounted sha256:\S+ \(.*\) from said/web$", r.stderr, re.M)
    # A new image on top: only it is packed and uploaded.
    populate(stacko, "app", {"srv/app": "x\n"}, parent="web")
    r = stacko("-v", "push-image", "app", f"{registry.host}/said/app:1", "--tls-verify=false")
    assert packed(r.stderr) == ["app"]
    assert re.fullmatch(rf"stacko: pushed 1 of 3 layers, {SIZE}, 0 already there, 2 mounted",
                        summary(r.stderr))


@needs_registry
@pytest.mark.mounts
def test_pushing_a_pulled_image_mounts_its_blobs_without_packing(
        stacko: Runner, registry: Registry, app: Dict[str, Path]) -> None:
    stacko("pull-image", "pulled", f"{registry.host}/moved:v1", "--tls-verify=false")
    mark = registry.mark()
    r = stacko("-v", "push-image", "pulled", f"{registry.host}/copy/pulled:1",
               "--tls-verify=false")
    assert packed(r.stderr) == []
    assert summary(r.stderr) == "stacko: pushed 0 of 3 layers, 0 B, 0 already there, 3 mounted"
    assert registry.blob_gets(mark) == []
    assert len(registry.blob_puts(mark)) == 1            # the config only
    # One request a layer (a mount, no HEAD before it), and the refused mount
    # of the config opens the session it is uploaded into: nothing to DELETE.
    asked = [(method, path.split("?")[0].rsplit("/", 1)[0]) for method, path, _ in
             registry.requests(mark) if path != "/v2/"]
    uploads = "/v2/copy/pulled/blobs/uploads"
    assert sorted(asked) == sorted([("POST", uploads)] * 4 + [("PUT", uploads),
                                   ("PUT", "/v2/copy/pulled/manifests")]), asked
    # the same layers as the original, and it pulls back, all of it reused
    r = stacko("pull-image", "back", f"{registry.host}/copy/pulled:1", "--tls-verify=false")
    assert re.fullmatch(rf"stacko: pulled 1 of 3 layers, {SIZE}, 2 reused", summary(r.stderr))
    inspect = json.loads(_skopeo_inspect(registry, "copy/pulled:1"))
    assert inspect["Layers"] == layer_digests(app["v1"])


def _skopeo_inspect(registry: Registry, ref: str) -> str:
    import subprocess
    return subprocess.run(["skopeo", "inspect", "--tls-verify=false",
                           f"docker://{registry.host}/{ref}"], check=True,
                          capture_output=True, text=True).stdout


# --- asking first: a wrong setting fails before anything is packed -----------------------
@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if not (available() and shutil.which("htpasswd")):
        pytest.skip("docker-registry and htpasswd are needed (tests/install-deps.sh)")
    r = Registry(tmp_path_factory.mktemp("secure-moved"), tls=True)
    try:
        yield r.start()
    finally:
        r.stop()


@pytest.mark.mounts
@pytest.mark.parametrize("wrong", ["creds", "tls"])
def test_a_wrong_setting_fails_before_anything_is_packed(
        stacko: Runner, root: Path, workdir: Path, secure: Registry, wrong: str) -> None:
    """A large-ish image (24 MB that do not compress): push refuses at its first
    request, and packs nothing."""
    stacko("new-image", "big")
    directory = Path(stacko("edit-image", "big").out)
    for n in range(3):
        (directory / f"blob-{n}").write_bytes(os.urandom(8 << 20))
    stacko("close-image", "big")
    before = snapshot(root)
    options = {"creds": ["--cert-dir", str(secure.certs), "--creds", "admin:wrong"],
               "tls": ["--creds", "admin:s3cret-pass"]}[wrong]
    mark = secure.mark()
    r = stacko("-v", "push-image", "big", f"{secure.host}/big:1", *options,
               env={"HOME": str(workdir), "XDG_RUNTIME_DIR": str(workdir)}, rc=1)
    assert packed(r.stderr) == [] and "packing" not in r.stderr
    assert "certificate" in r.stderr if wrong != "creds" else "refused the credentials" in r.stderr
    assert not [q for q in secure.requests(mark) if q[0] in ("POST", "PUT", "PATCH")]
    assert snapshot(root) == before
    assert not (root / "tmp").exists() or not any((root / "tmp").iterdir())


# --- import-image reads several blobs of one archive at once ---------------------------
def test_blobs_of_one_archive_read_at_once_each_get_their_own_bytes(tmp_path: Path) -> None:
    """Layers unpack in parallel from one tar archive: each blob is read with
    pread, so interleaved readers (and links to blobs) give the right bytes."""
    import io
    import tarfile
    from stacko.formats.ocisource import TarContainer
    archive = tmp_path / "a.tar"
    one, two = os.urandom(70_000), os.urandom(30_000)
    with tarfile.open(archive, "w") as tar:
        for name, data in (("blobs/one", one), ("blobs/two", two)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, kind, target in (("blobs/sym", tarfile.SYMTYPE, "one"),
                                   ("blobs/hard", tarfile.LNKTYPE, "blobs/two")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    with tarfile.open(archive) as tar:
        box = TarContainer(tar)
        readers = [box.open(n) for n in ("blobs/one", "blobs/two", "blobs/sym", "blobs/hard")]
        got = [b""] * 4
        while True:
            chunks = [r.read(4096) for r in readers]
            if not any(chunks):
                break
            got = [g + c for g, c in zip(got, chunks)]
    assert got == [one, two, one, two]


def test_the_progress_line_shows_only_after_a_second_and_is_erased(monkeypatch) -> None:
    """On a terminal: nothing for a quick operation; a long one (one message,
    then silence, as while one big layer unpacks) gets its line from a timer,
    and the line is erased at the end.  Never on stdout."""
    import io
    import time
    from stacko import moved

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr(moved, "PROGRESS_AFTER", 0.05)
    progress = moved.Progress()
    progress("packing layer 1/1")
    progress("")
    time.sleep(0.2)
    assert err.getvalue() == ""                       # quick: nothing at all
    progress("unpacking layer 1/1 (big)")
    deadline = time.monotonic() + 10
    while "big" not in err.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    progress("unpacking layer 2/2 (next)")
    progress("")
    assert err.getvalue() == ("\r\033[Kstacko: unpacking layer 1/1 (big)"
                              "\r\033[Kstacko: unpacking layer 2/2 (next)\r\033[K")


def test_a_packer_that_ends_frees_its_place_and_its_layer_goes_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two layers are packed at once: when the second ends first, the third
    starts packing and the second uploads while the first still packs (it
    used to wait for the first: push-image to an empty registry, docs/bench.md)."""
    import threading
    import types

    from stacko.formats import ociexport
    from stacko.registry import push
    events: list = []
    third_started = threading.Event()
    uploaded = threading.Event()

    def pack(store: object, image: object, n: int, compression: str, work: str) -> tuple:
        events.append(("pack", n))
        if n == 1:              # the bottom layer, long: done only once the others went
            assert third_started.wait(10) and uploaded.wait(10), events
        if n == 3:
            third_started.set()
        blob = types.SimpleNamespace(digest=f"sha256:{n:064x}", size=n, path="")
        return blob, f"sha256:{n + 10:064x}"

    def send(client: object, blob: object, sources: list, tally: Tally, asked: bool) -> None:
        events.append(("upload", blob.size))  # type: ignore[attr-defined]
        if blob.size == 2:  # type: ignore[attr-defined]
            uploaded.set()
    monkeypatch.setattr(ociexport, "pack_image_layer", pack)
    monkeypatch.setattr(push, "send_blob", send)
    chain = [types.SimpleNamespace(name=f"l{n}") for n in range(3)]
    layers: list = [None] * 3
    diff_ids: list = [None] * 3
    store = types.SimpleNamespace(tmp_dir=str(tmp_path))
    push.send_layers(store, chain, lambda n: None, layers, diff_ids, "gzip",  # type: ignore[arg-type]
                     None, [], Tally("pushed"), set(), lambda: (b"", ""))  # type: ignore[arg-type]
    assert [d["size"] for d in layers] == [1, 2, 3]
    assert diff_ids == [f"sha256:{n + 10:064x}" for n in (1, 2, 3)]
    assert events.index(("upload", 2)) < events.index(("upload", 1)), events

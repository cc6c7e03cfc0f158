"""pull-image and push-image against a real registry (Debian's docker-registry),
and interop with skopeo.  What a pull makes is compared with what import-image
of the same image makes; what travelled is counted in the registry's log."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest

from conftest import Runner, run_stacko, snapshot
from ocigen import describe, diff_trees, f, d, sh, wh, write_layout
from registryd import Registry, available, closed_port, skopeo_push
from registryfix import registry  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(
    not (available() and shutil.which("skopeo")),
    reason="docker-registry and skopeo are needed (tests/install-deps.sh)")


BASE = [d("etc"), f("etc/os-release", b"ID=stacko-test\n"), d("bin"),
        f("bin/tool", b"\x7fELF" + b"t" * 5000, mode=0o755)]
MIDDLE = [d("usr"), d("usr/lib"), f("usr/lib/libx.so", b"lib" * 3000), wh("bin/tool")]


def top(version: str) -> list:
    return [d("srv"), f("srv/version", version.encode()), f("srv/data", b"x" * 20000)]


@pytest.fixture(scope="module")
def app(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """app:v1 and app:v2 (same two lower layers, another top) in the registry, and
    their OCI layouts."""
    base = tmp_path_factory.mktemp("app")
    layouts = {}
    for version in ("v1", "v2"):
        layout = base / version
        write_layout(layout, [BASE, MIDDLE, top(version)], ref=version)
        skopeo_push(registry, f"oci:{layout}:{version}", f"app:{version}")
        layouts[version] = layout
    return layouts


def view(stacko: Runner, image: str) -> Path:
    stacko("new-stackpoint", f"sp-{image}", image)
    return Path(stacko("mount-stackpoint", f"sp-{image}").out)


def records(root: Path) -> Dict[str, dict]:
    """images.json without what differs between two imports of the same image."""
    images = json.loads((root / "images.json").read_text())["images"]
    return {name: {k: v for k, v in rec.items() if k not in ("layer", "created", "repos")}
            for name, rec in images.items()}


@pytest.mark.mounts
def test_pull_gives_what_import_gives(stacko: Runner, root: Path, workdir: Path,
                                      registry: Registry, app: Dict[str, Path]) -> None:
    stacko("pull-image", "app", f"{registry.host}/app:v1", "--tls-verify=false")
    other = workdir / "imported"
    run_stacko(other, "import-image", "app", str(app["v1"]), "--ref", "v1")
    assert stacko("list-images").out.splitlines() == ["app", "app.layer-1", "app.layer-2"]
    assert records(root) == records(other)
    pulled = describe(view(stacko, "app"))
    run_stacko(other, "new-stackpoint", "sp", "app")
    imported = describe(Path(run_stacko(other, "mount-stackpoint", "sp").out))
    assert pulled == imported, "\n".join(diff_trees(pulled, imported)[:20])
    assert (view(stacko, "app.layer-1") / "bin" / "tool").exists()
    assert not (root / "tmp").exists() or not list((root / "tmp").iterdir())


@pytest.mark.mounts
def test_update_fetches_only_the_changed_layer(stacko: Runner, root: Path, registry: Registry,
                                               app: Dict[str, Path]) -> None:
    stacko("pull-image", "app1", f"docker://{registry.host}/app:v1", "--tls-verify=false")
    mark = registry.mark()
    stacko("pull-image", "app2", f"{registry.host}/app:v2", "--tls-verify=false")
    v2 = json.loads((app["v2"] / "blobs" / "sha256" / json.loads(
        (app["v2"] / "index.json").read_text())["manifests"][0]["digest"][7:]).read_text())
    fetched = registry.blob_gets(mark)
    assert sorted(fetched) == sorted([v2["layers"][2]["digest"], v2["config"]["digest"]])
    assert stacko("list-images", "--tree").out.count("app1.layer-2") == 1
    images = json.loads((root / "images.json").read_text())["images"]
    assert images["app2"]["parent"] == "app1.layer-2"
    assert (view(stacko, "app2") / "srv" / "version").read_text() == "v2"


@pytest.mark.mounts
def test_pull_by_digest(stacko: Runner, registry: Registry, app: Dict[str, Path]) -> None:
    digest = json.loads((app["v1"] / "index.json").read_text())["manifests"][0]["digest"]
    stacko("pull-image", "pinned", f"{registry.host}/app@{digest}", "--tls-verify=false")
    assert (view(stacko, "pinned") / "srv" / "version").read_text() == "v1"


# --- bad input: a clear error, and nothing changes ---------------------------------------
@pytest.mark.parametrize("ref", ["debian:12", "library/debian", "localhost:5000/",
                                 "127.0.0.1:5000/UPPER", "ftp://h.example/x",
                                 "h.example/x@sha256:abc"])
def test_malformed_ref_is_a_usage_error(stacko: Runner, root: Path, ref: str) -> None:
    before = snapshot(root)
    r = stacko("pull-image", "x", ref, rc=2)
    assert "HOST[:PORT]/REPO" in r.stderr
    assert snapshot(root) == before


def test_unreachable_registry_names_the_host(stacko: Runner, root: Path) -> None:
    stacko("new-image", "keep")
    before = snapshot(root)
    host = f"127.0.0.1:{closed_port()}"
    start = time.monotonic()
    r = stacko("pull-image", "x", f"{host}/app:v1", "--tls-verify=false", rc=1)
    assert time.monotonic() - start < 60
    assert host in r.stderr
    assert snapshot(root) == before


def test_unknown_repository_and_tag(stacko: Runner, root: Path, registry: Registry,
                                    app: Dict[str, Path]) -> None:
    stacko("new-image", "keep")
    before = snapshot(root)
    r = stacko("pull-image", "x", f"{registry.host}/nothing-here:v1", "--tls-verify=false",
               rc=1)
    assert "nothing-here" in r.stderr
    r = stacko("pull-image", "x", f"{registry.host}/app:v9", "--tls-verify=false", rc=1)
    assert "v9" in r.stderr
    assert snapshot(root) == before


def test_pull_onto_an_existing_name_is_refused(stacko: Runner, root: Path,
                                               registry: Registry) -> None:
    stacko("new-image", "taken")
    before = snapshot(root)
    mark = registry.mark()
    r = stacko("pull-image", "taken", f"{registry.host}/app:v1", "--tls-verify=false", rc=1)
    assert "exists" in r.stderr
    assert snapshot(root) == before
    assert registry.requests(mark) == []


# --- push ----------------------------------------------------------------------------------
def made(stacko: Runner) -> None:
    """base (two files) and web on it (one file, one deletion)."""
    from conftest import populate
    populate(stacko, "base", {"etc/os-release": "ID=base\n", "bin/sh": "#!" + "s" * 4000})
    populate(stacko, "web", {"srv/index.html": "hello\n"}, parent="base")


@pytest.mark.mounts
def test_push_then_pull_elsewhere(stacko: Runner, root: Path, workdir: Path,
                                  registry: Registry) -> None:
    made(stacko)
    mark = registry.mark()
    stacko("push-image", "web", f"{registry.host}/pushed/web:1", "--tls-verify=false")
    assert len(registry.blob_puts(mark)) == 3            # two layers and the config
    # skopeo reads it, and sees two layers
    inspect = json.loads(sh("skopeo", "inspect", "--tls-verify=false",
                            f"docker://{registry.host}/pushed/web:1").stdout)
    assert len(inspect["Layers"]) == 2
    other = workdir / "other"
    run_stacko(other, "pull-image", "web", f"{registry.host}/pushed/web:1", "--tls-verify=false")
    assert run_stacko(other, "list-images").out.splitlines() == ["base", "web"]
    run_stacko(other, "new-stackpoint", "sp", "web")
    theirs = describe(Path(run_stacko(other, "mount-stackpoint", "sp").out))
    ours = describe(view(stacko, "web"))
    assert ours == theirs, "\n".join(diff_trees(ours, theirs)[:20])


@pytest.mark.mounts
def test_second_push_uploads_nothing_and_gives_the_same_digests(
        stacko: Runner, registry: Registry) -> None:
    made(stacko)
    ref = f"{registry.host}/twice/web:1"
    stacko("push-image", "web", ref, "--tls-verify=false")
    first = sh("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout
    mark = registry.mark()
    stacko("push-image", "web", ref, "--tls-verify=false")
    assert registry.blob_puts(mark) == []
    assert sh("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout \
        == first
    # another repository of the same registry: mounted, not uploaded again
    mark = registry.mark()
    stacko("push-image", "web", f"{registry.host}/elsewhere/web:1", "--tls-verify=false")
    assert registry.blob_puts(mark) == []


def test_push_of_a_missing_image(stacko: Runner, root: Path, registry: Registry) -> None:
    stacko("new-image", "keep")
    before = snapshot(root)
    mark = registry.mark()
    r = stacko("push-image", "ghost", f"{registry.host}/ghost:1", "--tls-verify=false", rc=1)
    assert "ghost" in r.stderr
    assert snapshot(root) == before
    assert registry.requests(mark) == []


# --- lock scope ------------------------------------------------------------------------------
def test_commands_do_not_wait_behind_an_import(stacko: Runner, root: Path, workdir: Path,
                                               app: Dict[str, Path]) -> None:
    """An import holds the lock only to check and to record: while it reads its
    archive (here: from a pipe that is held open), listings and changes run."""
    import os
    import subprocess
    import sys
    stacko("new-image", "before")
    archive = workdir / "app.tar"
    sh("skopeo", "copy", f"oci:{app['v1']}:v1", f"oci-archive:{archive}")
    data = archive.read_bytes()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    importer = subprocess.Popen([sys.executable, "-m", "stacko", "--root", str(root),
                                 "import-image", "slow", "-"], stdin=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
    assert importer.stdin is not None
    importer.stdin.write(data[:len(data) // 2])
    importer.stdin.flush()
    deadline = time.monotonic() + 30
    while not any((root / "tmp").glob("import-*/*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    quick = {"STACKO_LOCK_TIMEOUT": "3"}
    assert stacko("list-images", env=quick).out.splitlines() == ["before"]
    stacko("new-image", "during", env=quick)            # an exclusive command
    assert importer.poll() is None, "the import ended before the test could look"
    importer.stdin.write(data[len(data) // 2:])
    importer.stdin.close()
    assert importer.wait(60) == 0, importer.stderr.read() if importer.stderr else ""
    assert stacko("list-images").out.splitlines() == ["before", "during", "slow",
                                                      "slow.layer-1", "slow.layer-2"]


# --- TLS and credentials -------------------------------------------------------------------
@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory,
           app: Dict[str, Path]) -> Iterator[Registry]:
    """A registry with a self-signed certificate and htpasswd users, holding app:v1."""
    if not shutil.which("htpasswd"):
        pytest.skip("htpasswd is needed (apache2-utils; tests/install-deps.sh)")
    r = Registry(tmp_path_factory.mktemp("secure"), tls=True)
    try:
        r.start()
        skopeo_push(r, f"oci:{app['v1']}:v1", "app:v1")
        yield r
    finally:
        r.stop()


@pytest.mark.mounts
def test_pull_and_push_with_tls_and_credentials(stacko: Runner, secure: Registry) -> None:
    stacko("pull-image", "app", f"{secure.host}/app:v1", *secure.stacko_options())
    assert (view(stacko, "app") / "srv" / "version").read_text() == "v1"
    made(stacko)
    stacko("push-image", "web", f"{secure.host}/web:1", *secure.stacko_options())
    sh("skopeo", "inspect", *[o.replace("--src-", "--") for o in secure.skopeo_src()],
       f"docker://{secure.host}/web:1")


def test_credentials_from_an_auth_file(stacko: Runner, root: Path, workdir: Path,
                                       secure: Registry) -> None:
    import base64
    token = base64.b64encode(b"admin:s3cret-pass").decode()
    auth = workdir / "run" / "containers" / "auth.json"
    auth.parent.mkdir(parents=True)
    auth.write_text(json.dumps({"auths": {secure.host: {"auth": token}}}))
    certs = ["--cert-dir", str(secure.certs)]
    stacko("pull-image", "a", f"{secure.host}/app:v1", *certs, "--authfile", str(auth))
    # the containers auth file under $XDG_RUNTIME_DIR, as podman login writes it
    stacko("pull-image", "b", f"{secure.host}/app:v1", *certs,
           env={"XDG_RUNTIME_DIR": str(workdir / "run"), "HOME": str(workdir)})
    assert "b" in stacko("list-images").out.splitlines()


@pytest.mark.parametrize("how", ["wrong", "none"])
def test_wrong_or_missing_credentials(stacko: Runner, root: Path, workdir: Path,
                                      secure: Registry, how: str) -> None:
    stacko("new-image", "keep")
    before = snapshot(root)
    creds = ["--creds", "admin:wrong"] if how == "wrong" else []
    r = stacko("pull-image", "x", f"{secure.host}/app:v1", "--cert-dir", str(secure.certs),
               *creds, env={"HOME": str(workdir), "XDG_RUNTIME_DIR": str(workdir)}, rc=1)
    assert secure.host in r.stderr and "--creds" in r.stderr
    assert snapshot(root) == before


def test_unverifiable_certificate_gives_the_way_out(stacko: Runner, root: Path,
                                                   secure: Registry) -> None:
    stacko("new-image", "keep")
    before = snapshot(root)
    r = stacko("pull-image", "x", f"{secure.host}/app:v1", "--creds", "admin:s3cret-pass",
               rc=1)
    assert "certificate" in r.stderr
    assert "--cert-dir" in r.stderr and "--tls-verify=false" in r.stderr
    assert snapshot(root) == before
    # and the way out works: no verification, over TLS all the same
    stacko("pull-image", "x", f"{secure.host}/app:v1", "--creds", "admin:s3cret-pass",
           "--tls-verify=false")


def test_plain_http_registry_needs_tls_verify_false(stacko: Runner, root: Path,
                                                   registry: Registry,
                                                   app: Dict[str, Path]) -> None:
    r = stacko("pull-image", "x", f"{registry.host}/app:v1", rc=1)
    assert "--tls-verify=false" in r.stderr


# --- corrupt data, killed pulls, platforms ------------------------------------------------
def blob_file(registry: Registry, digest: str) -> Path:
    hexa = digest.split(":")[1]
    return registry.base / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / \
        hexa[:2] / hexa / "data"


def test_corrupt_blob_records_nothing(stacko: Runner, root: Path, registry: Registry,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    layout = tmp_path_factory.mktemp("corrupt") / "layout"
    write_layout(layout, [BASE, [f("only-here", b"corrupt me" * 1000)]],
                              ref="v1", compression=["gzip", "none"])
    skopeo_push(registry, f"oci:{layout}:v1", "corrupt:v1")
    manifest = json.loads(sh("skopeo", "inspect", "--raw", "--tls-verify=false",
                             f"docker://{registry.host}/corrupt:v1").stdout)
    digest = manifest["layers"][1]["digest"]      # skopeo may have compressed it
    victim = blob_file(registry, digest)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    stacko("new-image", "keep")
    before = snapshot(root)
    r = stacko("pull-image", "x", f"{registry.host}/corrupt:v1", "--tls-verify=false", rc=1)
    # refused, naming the layer and the cause, even when the damage made the
    # gzip or tar reader fail before the digest could be checked
    assert digest in r.stderr and "does not match its digest" in r.stderr
    assert snapshot(root) == before
    assert not list((root / "tmp").glob("*"))


@pytest.mark.mounts
def test_killed_pull_leaves_nothing_and_pulling_again_works(
        stacko: Runner, root: Path, registry: Registry,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    import os
    import random
    import signal
    import subprocess
    import sys
    layout = tmp_path_factory.mktemp("big") / "layout"
    rng = random.Random(7)
    big = [f(f"blob{n}", rng.randbytes(8 << 20)) for n in range(12)]       # 96 MiB
    write_layout(layout, [BASE, big], ref="v1", compression=["gzip", "none"])
    skopeo_push(registry, f"oci:{layout}:v1", "big:v1")
    stacko("new-image", "keep")
    before = snapshot(root)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    puller = subprocess.Popen([sys.executable, "-m", "stacko", "--root", str(root), "pull-image",
                               "big", f"{registry.host}/big:v1", "--tls-verify=false"],
                              env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list((root / "tmp").glob("import-*/layer-*/blob*")) \
            and time.monotonic() < deadline and puller.poll() is None:
        time.sleep(0.01)
    assert puller.poll() is None, "the pull ended before it could be killed"
    puller.send_signal(signal.SIGKILL)
    puller.wait()
    assert snapshot(root) == before
    stacko("pull-image", "big", f"{registry.host}/big:v1", "--tls-verify=false")
    assert not list((root / "tmp").glob("*")), "the next pull cleans what the killed one left"
    assert (view(stacko, "big") / "blob11").stat().st_size == 8 << 20


def multi_platform(base: Path) -> Path:
    """An OCI layout whose index 'multi' lists linux/amd64 and linux/arm64 images."""
    import hashlib
    layout = base / "multi"
    images = {}
    for arch in ("amd64", "arm64"):
        images[arch] = write_layout(layout, [[f("arch", arch.encode())]], ref=arch,
                                    add=arch != "amd64")
    index = json.loads((layout / "index.json").read_text())
    nested = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
              "manifests": [{**{k: v for k, v in m.items() if k != "annotations"},
                             "platform": {"os": "linux", "architecture": arch}}
                            for m, arch in zip(index["manifests"], ("amd64", "arm64"))]}
    data = json.dumps(nested).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                               "digest": "sha256:" + digest, "size": len(data),
                               "annotations": {"org.opencontainers.image.ref.name": "multi"}})
    (layout / "index.json").write_text(json.dumps(index))
    return layout


@pytest.mark.mounts
def test_multi_platform_index(stacko: Runner, root: Path, registry: Registry,
                              tmp_path_factory: pytest.TempPathFactory) -> None:
    from stacko.formats.ocisource import host_architecture
    layout = multi_platform(tmp_path_factory.mktemp("multi"))
    sh("skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{layout}:multi",
       f"docker://{registry.host}/multi:1")
    ref = f"{registry.host}/multi:1"
    stacko("pull-image", "arm", ref, "--platform", "linux/arm64", "--tls-verify=false")
    assert (view(stacko, "arm") / "arch").read_text() == "arm64"
    if host_architecture() in ("amd64", "arm64"):
        stacko("pull-image", "mine", ref, "--tls-verify=false")
        assert (view(stacko, "mine") / "arch").read_text() == host_architecture()
    before = snapshot(root)
    r = stacko("pull-image", "x", ref, "--platform", "linux/s390x", "--tls-verify=false", rc=1)
    assert "linux/amd64" in r.stderr and "linux/arm64" in r.stderr
    assert snapshot(root) == before


# --- a fleet --------------------------------------------------------------------------------
def test_fleet_update_moves_only_the_changed_layer(workdir: Path, registry: Registry,
                                                   app: Dict[str, Path]) -> None:
    """Eight machines (state roots) pull v1; then all pull v2 at once: each fetches
    the changed top layer and the config, and nothing else."""
    import subprocess
    import sys
    import os
    roots = [workdir / f"machine-{n}" for n in range(8)]
    for r in roots:
        run_stacko(r, "pull-image", "app-v1", f"{registry.host}/app:v1", "--tls-verify=false")
    mark = registry.mark()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    procs = [subprocess.Popen([sys.executable, "-m", "stacko", "--root", str(r), "pull-image",
                               "app-v2", f"{registry.host}/app:v2", "--tls-verify=false"],
                              env=env, stderr=subprocess.PIPE) for r in roots]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read() if p.stderr else ""
    manifest = json.loads(sh("skopeo", "inspect", "--raw", "--tls-verify=false",
                             f"docker://{registry.host}/app:v2").stdout)
    changed, config = manifest["layers"][2]["digest"], manifest["config"]["digest"]
    assert sorted(registry.blob_gets(mark)) == sorted([changed, config] * 8)
    for r in roots:
        assert run_stacko(r, "list-images").out.splitlines() == \
            ["app-v1", "app-v1.layer-1", "app-v1.layer-2", "app-v2"]


# --- the image config ------------------------------------------------------------------------
RUN = {"Cmd": ["/bin/app", "--serve"], "Env": ["PATH=/usr/bin:/bin", "MODE=prod"],
       "WorkingDir": "/srv", "User": "1000:1000", "Labels": {"tier": "web"},
       "ExposedPorts": {"8080/tcp": {}}, "StopSignal": "SIGINT"}


def configured_layout(base: Path) -> Path:
    """An OCI layout whose config has run settings and whose manifest has annotations."""
    import hashlib
    layout = base / "configured"
    made_image = write_layout(layout, [BASE, top("cfg")], ref="cfg")
    config = dict(made_image["config"], config=RUN)
    data = json.dumps(config).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    manifest = dict(made_image["manifest"],
                    config={**made_image["manifest"]["config"], "digest": "sha256:" + digest,
                            "size": len(data)},
                    annotations={"org.opencontainers.image.version": "1.4"})
    mdata = json.dumps(manifest).encode()
    mdigest = hashlib.sha256(mdata).hexdigest()
    (layout / "blobs" / "sha256" / mdigest).write_bytes(mdata)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest="sha256:" + mdigest, size=len(mdata))
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def inspect_config(ref: str, *options: str) -> dict:
    return json.loads(sh("skopeo", "inspect", "--config", *options, ref).stdout)


@pytest.mark.mounts
def test_run_settings_survive_import_export_push_pull(
        stacko: Runner, root: Path, workdir: Path, registry: Registry,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    layout = configured_layout(tmp_path_factory.mktemp("cfg"))
    stacko("import-image", "web", str(layout))
    shown = {i["name"]: i for i in json.loads(stacko("list-images", "--json").out)}
    assert shown["web"]["config"] == RUN
    assert shown["web"]["annotations"] == {"org.opencontainers.image.version": "1.4"}
    out = workdir / "web.tar"
    stacko("export-image", "web", str(out))
    assert inspect_config(f"oci-archive:{out}")["config"] == RUN
    stacko("push-image", "web", f"{registry.host}/cfg/web:1", "--tls-verify=false")
    ref = f"docker://{registry.host}/cfg/web:1"
    assert inspect_config(ref, "--tls-verify=false")["config"] == RUN
    raw = json.loads(sh("skopeo", "inspect", "--raw", "--tls-verify=false", ref).stdout)
    assert raw["annotations"] == {"org.opencontainers.image.version": "1.4"}
    other = workdir / "other"
    run_stacko(other, "pull-image", "web", ref, "--tls-verify=false")
    theirs = {i["name"]: i for i in json.loads(run_stacko(other, "list-images", "--json").out)}
    assert theirs["web"]["config"] == RUN


@pytest.mark.mounts
def test_a_child_inherits_and_changes_its_parents_settings(
        stacko: Runner, root: Path, workdir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    layout = configured_layout(tmp_path_factory.mktemp("cfg"))
    stacko("import-image", "web", str(layout))
    stacko("new-image", "child", "web", "--config", "Env=MODE=test", "--config",
           "Cmd=/bin/app --check", "--config", "User=", "--annotation", "team=ops")
    shown = {i["name"]: i for i in json.loads(stacko("list-images", "--json").out)}
    config = shown["child"]["config"]
    assert config["Env"] == ["PATH=/usr/bin:/bin", "MODE=test"]
    assert config["Cmd"] == ["/bin/app", "--check"]
    assert "User" not in config and config["WorkingDir"] == "/srv"
    assert shown["child"]["annotations"] == {"org.opencontainers.image.version": "1.4",
                                             "team": "ops"}
    # commit-stackpoint's image runs as the image it was made on
    stacko("new-stackpoint", "sp", "web")
    stacko("commit-stackpoint", "sp", "web-next")
    shown = {i["name"]: i for i in json.loads(stacko("list-images", "--json").out)}
    assert shown["web-next"]["config"] == RUN
    before = snapshot(root)
    r = stacko("new-image", "bad", "web", "--config", "Colour=blue", rc=2)
    assert "Entrypoint" in r.stderr
    assert snapshot(root) == before


@pytest.mark.mounts
def test_exported_image_imported_back_reuses_its_base(stacko: Runner, root: Path,
                                                      workdir: Path) -> None:
    made(stacko)
    out = workdir / "web.tar"
    stacko("export-image", "web", str(out))
    images = json.loads((root / "images.json").read_text())["images"]
    layers = json.loads(sh("skopeo", "inspect", "--raw", f"oci-archive:{out}").stdout)["layers"]
    assert layers[0]["digest"] in images["base"]["digests"]      # remembered by the export
    stacko("import-image", "web2", str(out))
    assert stacko("list-images").out.splitlines() == ["base", "web", "web2"]
    images = json.loads((root / "images.json").read_text())["images"]
    assert images["web2"]["parent"] == "base"


# --- interop: umoci (through an OCI layout) and podman -------------------------------------
@pytest.mark.mounts
@pytest.mark.skipif(not shutil.which("umoci"), reason="umoci is needed")
def test_pushed_image_unpacks_with_umoci_as_stacko_shows_it(
        stacko: Runner, workdir: Path, registry: Registry) -> None:
    made(stacko)
    stacko("push-image", "web", f"{registry.host}/umoci/web:1", "--tls-verify=false")
    layout = workdir / "layout"
    sh("skopeo", "copy", "-q", "--src-tls-verify=false",
       f"docker://{registry.host}/umoci/web:1", f"oci:{layout}:web")
    sh("umoci", "unpack", "--image", f"{layout}:web", workdir / "bundle")
    theirs = describe(workdir / "bundle" / "rootfs", dir_mtimes=False)
    ours = describe(view(stacko, "web"), dir_mtimes=False)
    assert ours == theirs, "\n".join(diff_trees(ours, theirs)[:20])


def podman(base: Path, *args: str) -> str:
    # podman refuses a run root longer than 50 characters: a short one in /tmp,
    # named in base so that the test removes it
    marker = base / "runroot"
    if not marker.exists():
        import tempfile
        base.mkdir(parents=True, exist_ok=True)
        marker.write_text(tempfile.mkdtemp(prefix="stacko-podman-", dir="/tmp"))
    return sh("podman", "--root", str(base / "storage"), "--runroot", marker.read_text(),
              "--storage-driver", "vfs", *args).stdout.decode()


@pytest.mark.mounts
@pytest.mark.skipif(not shutil.which("podman"), reason="podman is needed")
def test_podman_pulls_what_stacko_pushed_and_stacko_pulls_what_podman_pushed(
        stacko: Runner, workdir: Path, registry: Registry,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    layout = configured_layout(tmp_path_factory.mktemp("cfg"))
    stacko("import-image", "web", str(layout))
    stacko("push-image", "web", f"{registry.host}/podman/web:1", "--tls-verify=false")
    store = workdir / "podman"
    try:
        podman_both_ways(stacko, store, registry)
    finally:
        if (store / "runroot").exists():
            shutil.rmtree((store / "runroot").read_text(), ignore_errors=True)


def podman_both_ways(stacko: Runner, store: Path, registry: Registry) -> None:
    podman(store, "pull", "-q", "--tls-verify=false", f"{registry.host}/podman/web:1")
    inspect = json.loads(podman(store, "image", "inspect", f"{registry.host}/podman/web:1"))
    assert inspect[0]["Config"]["Cmd"] == RUN["Cmd"]
    assert inspect[0]["Config"]["WorkingDir"] == RUN["WorkingDir"]
    podman(store, "push", "-q", "--tls-verify=false", f"{registry.host}/podman/web:1",
           f"docker://{registry.host}/podman/back:1")
    stacko("pull-image", "back", f"{registry.host}/podman/back:1", "--tls-verify=false")
    shown = {i["name"]: i for i in json.loads(stacko("list-images", "--json").out)}
    assert shown["back"]["config"]["Cmd"] == RUN["Cmd"]
    assert (view(stacko, "back") / "srv" / "version").read_text() == "cfg"

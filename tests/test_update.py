"""update-stackpoint against a real registry (Debian's docker-registry): a tag
that moves is followed with only the changed layers fetched (the registry's
log); one that does not move fetches no blob; the trust policy, a failing
check, --keep, --dry-run, a registry that is down and SIGKILL at each step."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import Runner, run_stacko, snapshot
from ocigen import d, f, write_layout
from registryd import Registry, available, closed_port, skopeo_push
from registryfix import registry  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.mounts, pytest.mark.skipif(
    not available(), reason="docker-registry and skopeo are needed (tests/install-deps.sh)")]

BASE = [d("etc"), f("etc/os-release", b"ID=fleet\n")]
MIDDLE = [d("usr"), f("usr/lib.so", b"lib" * 3000)]


def top(version: str, extra: bytes = b"") -> list:
    return [d("srv"), f("srv/version", version.encode()), f("srv/extra", extra)]


class Channel:
    """A repository whose tag `stable` a CI job moves from version to version."""

    def __init__(self, registry: Registry, tmp: Path, name: str) -> None:
        self.registry, self.tmp = registry, tmp
        self.repo = "fleet/app" + hashlib.sha256(name.encode()).hexdigest()[:8]
        self.ref = f"{registry.host}/{self.repo}:stable"
        self.layers: Dict[str, List[str]] = {}

    def publish(self, version: str, extra: bytes = b"") -> None:
        layout = self.tmp / f"layout-{version}"
        written = write_layout(layout, [BASE, MIDDLE, top(version, extra)], ref=version)
        self.layers[version] = [desc["digest"] for desc in written["layers"]]
        skopeo_push(self.registry, f"oci:{layout}:{version}", f"{self.repo}:stable")


@pytest.fixture
def channel(registry: Registry, tmp_path: Path, request: pytest.FixtureRequest) -> Channel:
    return Channel(registry, tmp_path, request.node.name)


@pytest.fixture
def point(stacko: Runner) -> str:
    """Stackpoint p on an image an admin made by hand, mounted."""
    stacko("new-image", "seed")
    stacko("new-stackpoint", "p", "seed")
    stacko("mount-stackpoint", "p")
    return "p"


def update(stacko: Runner, channel: Channel, *more: str, rc: int = 0):
    return stacko("update-stackpoint", "p", channel.ref, "--tls-verify=false", *more, rc=rc)


def state(stacko: Runner) -> dict:
    return json.loads(stacko("list-stackpoints", "--json").out)[0]


def version(stacko: Runner) -> str:
    return (Path(stacko("get-stackpoint-dir", "p").out) / "srv" / "version").read_text()


def test_the_tag_moves_and_only_the_changed_layer_travels(
        stacko: Runner, root: Path, registry: Registry, channel: Channel, point: str) -> None:
    channel.publish("v1")
    r = update(stacko, channel)
    assert r.stdout == "" and "updated from 'seed'" in r.stderr
    assert version(stacko) == "v1"
    first = state(stacko)
    v1 = first["current"]
    assert first["follows"]["ref"] == channel.ref
    digest = first["follows"]["digest"]
    # The documented name: the repository's last component, 16 digits of the digest.
    assert v1 == f"app{channel.repo[-8:]}.{digest[7:23]}"
    assert first["history"] == ["seed"]
    channel.publish("v2")
    mark = registry.mark()
    r = update(stacko, channel)
    assert "pulled 1 of 3 layers" in r.stderr and "2 reused" in r.stderr
    assert version(stacko) == "v2"
    fetched = registry.blob_gets(mark)
    assert channel.layers["v2"][2] in fetched
    assert not set(channel.layers["v2"][:2]) & set(fetched), fetched
    assert len(fetched) == 2          # the top layer and the config
    now = state(stacko)
    assert now["history"] == ["seed", v1]
    assert now["events"][-1]["action"] == "update"
    assert now["events"][-1]["from"] == v1 and now["follows"]["digest"] in now["events"][-1]["reason"]
    listed = {i["name"]: i for i in json.loads(stacko("list-images", "--json").out)}
    assert listed[now["current"]]["repos"] == [f"{registry.host}/{channel.repo}"]


def test_the_tag_does_not_move_no_blob_fetched(stacko: Runner, root: Path, registry: Registry,
                                               channel: Channel, point: str) -> None:
    channel.publish("v1")
    update(stacko, channel)
    before = state(stacko)
    images = (root / "images.json").read_bytes()
    mark = registry.mark()
    for _ in range(3):
        r = update(stacko, channel)
        assert f"p is up to date with {channel.ref}" in r.stderr
    assert registry.blob_gets(mark) == []
    assert all("/manifests/" in p or p == "/v2/" for _, p, _ in registry.requests(mark))
    after = state(stacko)
    assert (root / "images.json").read_bytes() == images
    assert after["events"][:-1] == before["events"]        # one no-op event, not three
    assert after["events"][-1]["action"] == "update-current"
    assert after["follows"]["checked"] >= before["follows"]["checked"]
    assert {k: v for k, v in after.items() if k not in ("events", "follows")} == \
        {k: v for k, v in before.items() if k not in ("events", "follows")}


def test_an_unsigned_image_is_refused_under_a_signing_policy(
        stacko: Runner, root: Path, registry: Registry, channel: Channel, point: str,
        tmp_path: Path) -> None:
    channel.publish("v1")
    update(stacko, channel)
    (tmp_path / "pass").write_text("secret\n")
    stacko("generate-sigstore-key", "--output-prefix", str(tmp_path / "key"),
           "--passphrase-file", str(tmp_path / "pass"))
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": {
        f"{registry.host}/{channel.repo}": [{"type": "sigstoreSigned",
                                             "keyPath": str(tmp_path / "key.pub")}]}}}))
    channel.publish("v3")
    before = snapshot(root)
    events = state(stacko)["events"]
    mark = registry.mark()
    r = update(stacko, channel, "--policy", str(policy), rc=1)
    assert "stacko: error:" in r.stderr and "signature" in r.stderr
    assert registry.blob_gets(mark) == []
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k != "stackpoints.json"} == \
        {k: v for k, v in before.items() if k != "stackpoints.json"}
    now = state(stacko)
    assert version(stacko) == "v1"
    assert now["events"][:-1] == events and now["events"][-1]["action"] == "update-refused"
    r = update(stacko, channel, "--dry-run", "--policy", str(policy))
    assert "would refuse" in r.stderr


def test_a_failing_check_falls_back_and_is_not_retried(stacko: Runner, root: Path,
                                                       channel: Channel, point: str) -> None:
    channel.publish("v1")
    update(stacko, channel)
    channel.publish("v2")
    update(stacko, channel)
    good = state(stacko)
    channel.publish("v3")
    check = 'test "$(cat "$STACKO_DIR/srv/version")" != v3'
    r = update(stacko, channel, "--check", check, rc=1)
    assert "fell back" in r.stderr
    now = state(stacko)
    assert now["current"] == good["current"] and version(stacko) == "v2"
    assert now["history"] == good["history"]
    assert now["events"][-1]["action"] == "check-failed"
    # The next look does not cut over to the image that failed again.
    r = update(stacko, channel, "--check", check)
    assert "stays on" in r.stderr and version(stacko) == "v2"


def test_keep_prunes_old_instances_and_their_images(stacko: Runner, root: Path,
                                                    channel: Channel, point: str) -> None:
    names = []
    for v in ("v1", "v2"):
        channel.publish(v)
        update(stacko, channel)
        names.append(state(stacko)["current"])
    channel.publish("v3")
    r = update(stacko, channel, "--keep", "1")
    now = state(stacko)
    assert now["history"] == [names[1]]          # the fallback target is kept
    assert [i["image"] for i in now["instances"]] == [names[1], now["current"]] or \
        sorted(i["image"] for i in now["instances"]) == sorted([names[1], now["current"]])
    images = stacko("list-images").out.splitlines()
    assert "seed" in images                      # made by hand: never deleted
    assert names[0] not in images and f"deleted image {names[0]!r}" in r.stderr
    assert names[1] in images
    # Lower layers the current image uses stay.
    assert f"{names[0]}.layer-1" in images and f"{names[0]}.layer-2" in images
    assert set(now["follows"]["images"]) == {names[1], now["current"], f"{names[0]}.layer-1",
                                             f"{names[0]}.layer-2"}
    stacko("check")
    update(stacko, channel, "--keep", "0", rc=2)


def test_delete_stackpoint_removes_the_update_lock(stacko: Runner, root: Path,
                                                   channel: Channel, point: str) -> None:
    channel.publish("v1")
    update(stacko, channel)
    lock = root / "tmp" / "update-p.lock"
    assert lock.is_file()
    stacko("umount-stackpoint", "p")
    stacko("delete-stackpoint", "p")
    assert not lock.exists()
    stacko("check")


def test_a_registry_that_is_down(stacko: Runner, root: Path, point: str) -> None:
    before = snapshot(root)
    r = stacko("update-stackpoint", "p", f"127.0.0.1:{closed_port()}/fleet/app:stable",
               "--tls-verify=false", rc=1, env={"STACKO_REGISTRY_TIMEOUT": "5"})
    assert "cannot look up" in r.stderr and "left as it was" in r.stderr
    assert snapshot(root) == before


def test_dry_run_changes_nothing(stacko: Runner, root: Path, registry: Registry,
                                 channel: Channel, point: str) -> None:
    channel.publish("v1")
    before = snapshot(root)
    mark = registry.mark()
    r = update(stacko, channel, "--dry-run")
    assert "would fetch 3 of 3 layers" in r.stderr
    assert snapshot(root) == before
    assert not set(channel.layers["v1"]) & set(registry.blob_gets(mark))
    update(stacko, channel)
    channel.publish("v2")
    before = snapshot(root)
    r = update(stacko, channel, "--dry-run")
    assert "would fetch 1 of 3 layers" in r.stderr
    assert snapshot(root) == before


def start(root: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.Popen([sys.executable, "-m", "stacko", "--root", str(root), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition, what: str, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.005)


def test_sigkill_during_the_pull(stacko: Runner, root: Path, channel: Channel,
                                 point: str) -> None:
    channel.publish("v1")
    update(stacko, channel)
    channel.publish("v2", extra=os.urandom(40 << 20))
    proc = start(root, "update-stackpoint", "p", channel.ref, "--tls-verify=false")
    tmp = root / "tmp"
    wait_for(lambda: any(n.startswith("import-") for n in
                         (os.listdir(tmp) if tmp.exists() else [])), "staging", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert version(stacko) == "v1"
    stacko("check", "--repair", rc=None)
    stacko("check")
    update(stacko, channel)
    assert version(stacko) == "v2"
    stacko("check")


def test_sigkill_during_the_check(stacko: Runner, root: Path, channel: Channel,
                                  point: str, tmp_path: Path) -> None:
    channel.publish("v1")
    update(stacko, channel)
    channel.publish("v2")
    marker = tmp_path / "checking"
    proc = start(root, "update-stackpoint", "p", channel.ref, "--tls-verify=false",
                 "--check", f"touch {marker}; sleep 60")
    wait_for(marker.exists, "check", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    stacko("check", "--repair", rc=None)
    stacko("check")
    assert version(stacko) == "v1"
    update(stacko, channel)               # not a failed check: the update is tried again
    assert version(stacko) == "v2"
    stacko("check")


def test_two_updates_at_once_cut_over_once(stacko: Runner, root: Path, channel: Channel,
                                           point: str) -> None:
    channel.publish("v1")
    procs = [start(root, "update-stackpoint", "p", channel.ref, "--tls-verify=false")
             for _ in range(2)]
    outs = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    actions = [e["action"] for e in state(stacko)["events"]]
    assert actions.count("update") == 1 and actions[-1] in ("update", "update-current")
    assert version(stacko) == "v1"


def test_a_tentative_cutover_is_decided_first(stacko: Runner, root: Path, registry: Registry,
                                              channel: Channel, point: str) -> None:
    channel.publish("v1")
    update(stacko, channel, "--tries", "1")
    assert state(stacko)["tentative"] == {"tries_left": 1, "tries": 1}
    channel.publish("v2")
    images = (root / "images.json").read_bytes()
    mark = registry.mark()
    r = update(stacko, channel, rc=1)
    assert "tentative" in r.stderr and "confirm-stackpoint" in r.stderr
    assert registry.blob_gets(mark) == [] and (root / "images.json").read_bytes() == images
    stacko("confirm-stackpoint", "p")
    update(stacko, channel)
    assert version(stacko) == "v2"

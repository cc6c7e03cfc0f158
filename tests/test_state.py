"""Unit tests of the metadata files: round trips, corruption, atomic writes."""
from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from stacko import state
from stacko.layers import remove_layer
from stacko.state import parse_json
from stacko.errors import CorruptState, StackoError
from stacko.names import check_name
from stacko.records import Image, Instance, Stackpoint
from stacko.errors import InvalidName


@pytest.fixture
def store(tmp_path):
    return state.Store(str(tmp_path / "root"))


def test_images_round_trip(store) -> None:
    images = {"a": Image("a", "abcde", None, "t"), "b": Image("b", "fghij", "a", "t")}
    with store.locked(exclusive=True):
        store.save_images(images)
    assert store.load_images() == images
    data = json.loads(open(store.images_file).read())
    assert data["version"] == 1 and sorted(data["images"]) == ["a", "b"]


def test_stackpoints_round_trip(store) -> None:
    point = Stackpoint("p", "b", None, ("a",), (Instance("a", "11111"), Instance("b", "22222")))
    with store.locked(exclusive=True):
        store.save_stackpoints({"p": point})
    assert store.load_stackpoints() == {"p": point}


def test_metadata_is_private(store) -> None:
    with store.locked(exclusive=True):
        store.save_images({})
    assert os.stat(store.images_file).st_mode & 0o777 == 0o600
    assert os.stat(store.root).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("text", ["{", "[]", '{"images": {}}', '{"version": 1, "images": []}',
                                  '{"version": 1, "images": {"a": {"name": "a"}}}',
                                  '{"version": 1, "images": {"a": {"name": "b", "layer": "x"}}}'])
def test_corrupt_images_file_names_the_file_and_is_left_alone(store, text) -> None:
    os.makedirs(store.root)
    with open(store.images_file, "w") as f:
        f.write(text)
    with pytest.raises(CorruptState, match="images.json"):
        store.load_images()
    assert open(store.images_file).read() == text


def test_newer_version_is_refused(store) -> None:
    os.makedirs(store.root)
    with open(store.stackpoints_file, "w") as f:
        f.write('{"version": 99, "stackpoints": {}}')
    with pytest.raises(CorruptState, match="newer"):
        store.load_stackpoints()


def test_stackpoint_without_current_instance_is_corrupt(store) -> None:
    os.makedirs(store.root)
    with open(store.stackpoints_file, "w") as f:
        json.dump({"version": 1, "stackpoints": {"p": {"name": "p", "current": "x", "history": [],
                                                       "instances": []}}}, f)
    with pytest.raises(CorruptState, match="no instance"):
        store.load_stackpoints()


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(store, monkeypatch) -> None:
    with store.locked(exclusive=True):
        store.save_images({"a": Image("a", "abcde")})
        before = open(store.images_file, "rb").read()

        def failing_fsync(fd):
            raise OSError(5, "Input/output error")
        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(StackoError, match="cannot write"):
            store.save_images({})
    assert open(store.images_file, "rb").read() == before
    assert [n for n in os.listdir(store.root) if n.endswith(".tmp")] == []


def test_failed_rename_keeps_the_old_file(store, monkeypatch) -> None:
    with store.locked(exclusive=True):
        store.save_images({"a": Image("a", "abcde")})
        before = open(store.images_file, "rb").read()
        monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(28, "No space")))
        with pytest.raises(StackoError):
            store.save_images({})
    assert open(store.images_file, "rb").read() == before
    assert [n for n in os.listdir(store.root) if n.endswith(".tmp")] == []


def test_listing_a_missing_root_creates_nothing(store) -> None:
    with store.locked(exclusive=False):
        assert store.load_images() == {}
    assert not os.path.exists(store.root)


def test_new_layer_makes_data_and_work_dirs(store) -> None:
    with store.locked(exclusive=True):
        layer = store.new_layer()
        assert len(layer) == 5
        assert os.path.isdir(store.layer_path(layer)) and os.path.isdir(store.work_path(layer))
        remove_layer(store, layer)
        assert not os.path.exists(store.layer_path(layer))


@pytest.mark.parametrize("name", ["a", "A9", "apps-1.0", "x_y+z", "a" * 128])
def test_valid_names(name) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "..", ".a", "-a", "a/b", "a b", "a" * 129, "é", "a\n", "_x"])
def test_invalid_names(name) -> None:
    with pytest.raises(InvalidName):
        check_name(name)
    assert InvalidName.exit_code == 2


def test_switching_keeps_history_without_duplicates() -> None:
    p = Stackpoint("p", "a", None, (), (Instance("a", "1"), Instance("b", "2")))
    p = p.switched_to("b")
    assert (p.current, p.history) == ("b", ("a",))
    p = p.switched_to("a")
    assert (p.current, p.history) == ("a", ("b",))
    assert p.without_instance("b").history == ()


def _fake_rm(tmp_path, body: str) -> dict:
    """An `rm` first on PATH that fails after doing what body says."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    (bindir / "rm").write_text(f"#!/bin/sh\n{body}\nexit 1\n")
    (bindir / "rm").chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


def test_delete_image_racing_another_remover_succeeds(stacko, tmp_path) -> None:
    """The rm of a killed delete-image goes on after it: ours failing because the
    entries vanished under it is not a failure, since the layer is gone."""
    stacko("new-image", "a")
    env = _fake_rm(tmp_path, '/bin/rm "$@"')
    stacko("delete-image", "a", env=env)
    assert stacko("list-images").out == ""
    assert stacko("check").returncode == 0


def test_delete_image_whose_layer_cannot_be_removed_says_so(stacko, root, tmp_path) -> None:
    stacko("new-image", "a")
    layers = os.listdir(root / "l")
    env = _fake_rm(tmp_path, 'echo "rm: cannot remove: Permission denied" >&2')
    result = stacko("delete-image", "a", env=env, rc=1)
    assert "Permission denied" in result.stderr
    assert os.listdir(root / "l") == layers


# --- parse_json: json.loads without importing json ------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=500, deadline=None)
@given(JSON_VALUES, st.sampled_from([None, 2]), st.sampled_from(["", " \n", "\t"]))
def test_parse_json_reads_what_json_loads_reads(value: object, indent: int | None,
                                                 pad: str) -> None:
    text = pad + json.dumps(value, indent=indent, ensure_ascii=False) + pad
    assert parse_json(text) == json.loads(text)


@pytest.mark.parametrize("text", ["{not json", '{"version": 1,}', "", "  ", "[1] [2]",
                                  "\ufeff{}", '{"a": tru', "[" * 100_000, "NaN x"])
def test_parse_json_refuses_what_json_loads_refuses_with_its_error(text: str) -> None:
    with pytest.raises((ValueError, RecursionError)) as expected:
        json.loads(text)
    with pytest.raises(type(expected.value)) as found:
        parse_json(text)
    assert str(found.value) == str(expected.value)


def test_parse_json_keeps_the_constants_json_loads_takes() -> None:
    text = '[NaN, Infinity, -Infinity, 1e400, 12345678901234567890]'
    assert repr(parse_json(text)) == repr(json.loads(text))


@pytest.mark.parametrize("name, staging", [
    ("import-12-ab3", True), ("export-0-Z", True), ("import-1-a-b", False),
    ("import--ab", False), ("import-1-", False), ("imports-1-a", False), ("import-١-a", False),
    ("import-1-é", False), ("other", False), ("import-1-a\n", False)])
def test_staging_names_are_what_stacko_makes(name: str, staging: bool) -> None:
    assert state.is_staging_name(name) is staging


def test_a_new_root_is_durable_before_anything_is_recorded_in_it(tmp_path) -> None:
    """The root's entry in its parent, and the marker in the root, are synced
    when they are made (ext4 orders them anyway; other filesystems need not)."""
    import shutil
    import subprocess
    import sys
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (tests/install-deps.sh installs it)")
    parent = tmp_path / "var lib"
    root = parent / "stacko"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(["strace", "-f", "-qq", "-y", "-e", "trace=fsync",
                        sys.executable, "-m", "stacko", "--root", str(root), "new-image", "a"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=repo))
    assert r.returncode == 0, r.stderr
    synced = [line.split("<", 1)[1].split(">", 1)[0] for line in r.stderr.splitlines()
              if line.startswith(("fsync(", "[pid")) and "fsync(" in line and "<" in line]
    assert str(parent) in synced and str(root / ".stacko-root") in synced
    assert str(root) in synced


def test_a_command_that_gives_up_says_first_that_it_waited(monkeypatch, capsys,
                                                           tmp_path) -> None:
    """A loaded machine can keep a waiting command off the processor from before
    the 1 s mark until past its timeout: it still says that it waited (it gave
    up silently before the line that says so)."""
    import fcntl
    import types
    lock = str(tmp_path / "lock")
    held = os.open(lock, os.O_RDWR | os.O_CREAT)
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)
    clock = iter([0.5, 2.0])          # one look before the 1 s mark, the next past the timeout
    from stacko import rootlock      # the lock of a root (Store's base class)
    monkeypatch.setattr(rootlock, "time", types.SimpleNamespace(monotonic=lambda: next(clock),
                                                                sleep=lambda s: None))
    monkeypatch.setenv("STACKO_LOCK_TIMEOUT", "1.5")
    try:
        with pytest.raises(rootlock.LockTimeout):
            rootlock.wait_for_lock(fd, fcntl.LOCK_EX, lock, 0.0)
    finally:
        os.close(fd)
        os.close(held)
    assert "waiting for another stacko command" in capsys.readouterr().err

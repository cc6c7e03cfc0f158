"""Messages a new admin can act on: hints for arguments given the other way
round, and lists of names in plain English.  Each check looks at what the user
sees: the stderr text, the exit status, an empty stdout, an unchanged state."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import Runner, snapshot
from stacko import words


@pytest.fixture
def system(stacko: Runner) -> Runner:
    """Images deb12 and deb12-v2 (on deb12), and a stackpoint sys of deb12."""
    stacko("new-image", "deb12")
    stacko("new-image", "deb12-v2", "deb12")
    stacko("new-stackpoint", "sys", "deb12")
    return stacko


def refused(stacko: Runner, root: Path, *argv: str, rc: int = 1) -> str:
    before = snapshot(root)
    r = stacko(*argv, rc=rc)
    assert r.stdout == ""
    assert snapshot(root) == before
    return r.stderr


@pytest.mark.mounts       # cutover needs root; it is refused before anything mounts
def test_cutover_with_image_and_point_swapped(system: Runner, root: Path) -> None:
    err = refused(system, root, "cutover-stackpoint", "deb12-v2", "sys")
    assert "stacko: error: no image named 'sys'\n" in err
    assert "stacko: hint: 'sys' is a stackpoint and 'deb12-v2' is an image: the order is " \
        "POINT IMAGE, `stacko cutover-stackpoint sys deb12-v2`" in err


@pytest.mark.parametrize("command", ["set-stackpoint-instance", "new-stackpoint-instance",
                                     "delete-stackpoint-instance"])
def test_instance_commands_with_image_and_point_swapped(system: Runner, root: Path,
                                                        command: str) -> None:
    err = refused(system, root, command, "deb12", "sys")
    assert "stacko: error: no " in err
    assert f"the order is POINT IMAGE, `stacko {command} sys deb12`" in err


def test_new_stackpoint_with_image_first(system: Runner, root: Path) -> None:
    err = refused(system, root, "new-stackpoint", "deb12", "web")
    assert "stacko: error: no image named 'web'\n" in err
    assert "'deb12' is an image: the order is POINT IMAGE, " \
        "`stacko new-stackpoint web deb12`" in err


def test_no_order_hint_when_the_order_is_right(system: Runner, root: Path) -> None:
    err = refused(system, root, "set-stackpoint-instance", "sys", "nope")
    assert "order" not in err
    err = refused(system, root, "new-image", "deb12")
    assert "stacko: error: image 'deb12' exists already\n" in err and "hint" not in err


def test_new_image_with_parent_first(system: Runner, root: Path) -> None:
    err = refused(system, root, "new-image", "deb12", "deb13")
    assert "stacko: error: image 'deb12' exists already\n" in err
    assert "stacko: hint: to stack a new image 'deb13' on 'deb12', the order is NAME PARENT: " \
        "`stacko new-image deb13 deb12`" in err


@pytest.mark.parametrize("path, rc", [("/tmp/deb12.tar", 2), ("deb12.tar", 1)])
def test_export_with_path_first(system: Runner, root: Path, workdir: Path,
                                path: str, rc: int) -> None:
    # A path is no image name (exit 2, as for any invalid name), a word may be
    # one that is not there (exit 1): both say the order.
    err = refused(system, root, "export-image", path, "deb12", rc=rc)
    assert f"the order is NAME PATH, `stacko export-image deb12 {path}`" in err
    assert not Path(path).exists()


def test_delete_image_names_its_users_in_plain_english(stacko: Runner, root: Path) -> None:
    stacko("new-image", "a")
    stacko("new-image", "b", "a")
    stacko("new-image", "c", "a")
    stacko("new-stackpoint", "p", "a")
    stacko("new-stackpoint", "q", "a")
    err = refused(stacko, root, "delete-image", "a")
    assert "stacko: error: cannot delete image 'a': images 'b' and 'c' and instances of " \
        "stackpoints 'p' and 'q' use it\n" in err
    stacko("delete-stackpoint", "q")
    stacko("delete-image", "c")
    err = refused(stacko, root, "delete-image", "a")
    assert "cannot delete image 'a': image 'b' and an instance of stackpoint 'p' use it\n" in err


@pytest.mark.mounts
def test_edit_image_names_its_users_in_plain_english(stacko: Runner, root: Path) -> None:
    stacko("new-image", "a")
    stacko("new-image", "b", "a")
    stacko("new-image", "c", "a")
    err = refused(stacko, root, "edit-image", "a")
    assert "cannot edit image 'a': images 'b' and 'c' stack on it," in err
    stacko("delete-image", "c")
    assert "cannot edit image 'a': image 'b' stacks on it," in refused(stacko, root,
                                                                       "edit-image", "a")


def test_words() -> None:
    assert words.join([]) == ""
    assert words.join(["a"]) == "a"
    assert words.join(["a", "b"]) == "a and b"
    assert words.join(["a", "b", "c"], "or") == "a, b or c"
    assert words.named("image", ["a"]) == "image 'a'"
    assert words.named("image", ["a", "b", "c"]) == "images 'a', 'b' and 'c'"
    many = words.named("image", [f"i{n}" for n in range(20)])
    assert many.startswith("images 'i0', 'i1'") and many.endswith("'i7' and 12 more")


# --- a root that is not there ------------------------------------------------------
LISTINGS = [("list-images",), ("list-images", "--json"), ("list-images", "--tree"),
            ("list-stackpoints",), ("list-stackpoints", "--json"), ("check",)]


@pytest.mark.parametrize("argv", LISTINGS)
def test_a_root_that_is_not_there_is_named_on_stderr(tmp_path: Path, argv) -> None:
    from conftest import run_stacko
    typo = tmp_path / "typo"
    r = run_stacko(typo, *argv)                          # exit 0, as before
    assert r.stdout == ("[]\n" if "--json" in argv else "")
    assert f"stacko: warning: no stacko state exists in {typo} (it does not exist; " \
        "see --root and $STACKO_ROOT)\n" in r.stderr
    assert not typo.exists()
    typo.mkdir()                                         # a directory, but no stacko state
    r = run_stacko(typo, *argv)
    assert "no stacko state exists in" in r.stderr and "no images.json" in r.stderr
    assert r.stdout == ("[]\n" if "--json" in argv else "")
    assert os.listdir(typo) == []


def test_a_root_with_state_gets_no_warning(stacko: Runner, root: Path) -> None:
    stacko("new-image", "a")
    stacko("delete-image", "a")          # nothing left, but stacko state all the same
    for argv in LISTINGS[:-1]:
        assert "warning" not in stacko(*argv).stderr


def test_an_unknown_name_in_a_missing_root_says_why(tmp_path: Path) -> None:
    from conftest import run_stacko
    r = run_stacko(tmp_path / "typo", "get-stackpoint-dir", "sys", rc=1)
    assert "no stacko state exists in" in r.stderr and "no stackpoint named 'sys'" in r.stderr


def test_check_says_what_it_looked_at(stacko: Runner, root: Path) -> None:
    stacko("new-image", "a")
    stacko("new-image", "b", "a")
    stacko("new-stackpoint", "p", "b")
    r = stacko("check")
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines == [f"stacko: check: nothing wrong in {root} (checked 2 images, 1 stackpoint "
                     "with 1 instance, 3 layer directories and 0 overlay mounts of its layers)"]
    # and a check that finds something does not say "nothing wrong"
    (root / "l" / "zzzzz").mkdir()
    r = stacko("check", rc=1)
    assert "nothing wrong" not in r.stderr and "zzzzz" in r.stdout


# --- one timestamp format ------------------------------------------------------------
UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.mark.mounts
def test_every_time_in_json_is_rfc3339_utc(stacko: Runner, root: Path, workdir: Path) -> None:
    from ocigen import f, write_layout
    layout = workdir / "layout"
    write_layout(layout, [[f("a", b"a")], [f("b", b"b")]],
                 created=["2026-11-25T20:22:05.187251933Z", "2026-11-25T22:22:21+02:00"])
    stacko("import-image", "app", str(layout))
    stacko("new-image", "mine")
    stacko("new-stackpoint", "p", "app")
    # a record written by an earlier stacko, in the form it used then
    data = json.loads((root / "images.json").read_text())
    data["images"]["mine"]["created"] = "2026-11-25T20:22:21+00:00"
    (root / "images.json").write_text(json.dumps(data))
    points = json.loads((root / "stackpoints.json").read_text())
    points["stackpoints"]["p"]["instances"][0]["created"] = "2026-11-25T21:00:00.5+01:00"
    (root / "stackpoints.json").write_text(json.dumps(points))

    listed = {i["name"]: i["created"] for i in json.loads(stacko("list-images", "--json").out)}
    assert listed["app.layer-1"] == "2026-11-25T20:22:05Z"
    assert listed["app"] == "2026-11-25T20:22:21Z"
    assert listed["mine"] == "2026-11-25T20:22:21Z"
    [point] = json.loads(stacko("list-stackpoints", "--json").out)
    assert point["instances"][0]["created"] == "2026-11-25T20:00:00Z"
    times = [v for v in listed.values()] + [i["created"] for i in point["instances"]]
    times += [e["time"] for e in point.get("events", [])]
    assert all(UTC.fullmatch(t) for t in times), times
    # and new records are written so
    stacko("new-image", "fresh")
    record = json.loads((root / "images.json").read_text())["images"]
    assert UTC.fullmatch(record["fresh"]["created"]) and record["app"]["created"].endswith("Z")


def test_utc_time() -> None:
    from stacko.names import utc_time
    assert utc_time("2026-11-25T20:22:21+00:00") == "2026-11-25T20:22:21Z"
    assert utc_time("2026-11-25T20:22:05.187251933Z") == "2026-11-25T20:22:05Z"
    assert utc_time("2026-11-26T01:52:05-0130") == "2026-11-26T03:22:05Z"
    assert utc_time("2026-11-25T20:22:05") == "2026-11-25T20:22:05Z"
    assert utc_time("") == "" and utc_time("yesterday") == "yesterday"


def test_a_mistyped_image_name_gets_a_suggestion(system: Runner, root: Path) -> None:
    err = refused(system, root, "delete-image", "deb21")
    assert "stacko: error: no image named 'deb21'\n" in err
    assert "stacko: hint: did you mean 'deb12' or 'deb12-v2'? `stacko list-images` shows the " \
        "images" in err
    err = refused(system, root, "new-image", "child", "Deb12-v2")
    assert "did you mean 'deb12-v2'" in err


def test_a_mistyped_stackpoint_name_gets_a_suggestion(system: Runner, root: Path) -> None:
    err = refused(system, root, "get-stackpoint-dir", "sy")
    assert "stacko: hint: did you mean 'sys'? `stacko list-stackpoints` shows" in err
    err = refused(system, root, "delete-stackpoint", "frobnicator")
    assert "did you mean" not in err and "`stacko list-stackpoints` shows" in err


def test_suggestions_import_difflib_only_for_a_name_not_found() -> None:
    import subprocess
    import sys
    probe = ("import sys; from stacko import images, suggest\n"
             "assert 'difflib' not in sys.modules\n"
             "print(suggest.close_names('deb21', ['deb12', 'web', 'DEB21']))\n"
             "assert 'difflib' in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.strip() == "['DEB21', 'deb12']"


def test_a_mistyped_instance_gets_a_suggestion(system: Runner, root: Path) -> None:
    err = refused(system, root, "delete-stackpoint-instance", "sys", "deb12-v2")
    assert "stackpoint 'sys' has no instance of 'deb12-v2'" in err
    assert "did you mean 'deb12'? `stacko new-stackpoint-instance sys deb12-v2` makes one" \
        in err

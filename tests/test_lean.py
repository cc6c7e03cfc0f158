"""The checks written with str methods, to keep `re` out of every command's
start (docs/startup.md), accept exactly what the regular expressions they
replace accept."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from stacko import overlay, validate
from stacko.records import is_name, is_utc_time

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
LAYER_RE = re.compile(r"[a-z0-9]{5}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
UTC_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
OCTAL_RE = re.compile(r"\\([0-7]{3})")

# Characters near the edges of every rule, and some far from them.
EDGY = st.lists(st.sampled_from(list("aZz09._+-/ \\\n\t:TZ,sha256é٣²\x00")
                                + ["\\054", "\\134", "\\12", "\\8"]),
                max_size=140).map("".join)


@settings(max_examples=2000, deadline=None)
@given(EDGY)
def test_names(text: str) -> None:
    assert is_name(text) == bool(NAME_RE.fullmatch(text))


@pytest.mark.parametrize("text", ["a", "A" * 128, "A" * 129, "", "-a", ".a", "a b", "é",
                                  "a\n", "0+_.-"])
def test_names_at_the_edges(text: str) -> None:
    assert is_name(text) == bool(NAME_RE.fullmatch(text))


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="abz09AZ-", min_size=4, max_size=6))
def test_layers(text: str) -> None:
    assert validate.is_layer(text) == bool(LAYER_RE.fullmatch(text))


@pytest.mark.parametrize("text", ["sha256:" + "0" * 64, "sha256:" + "f" * 64,
                                  "sha256:" + "F" * 64, "sha256:" + "0" * 63,
                                  "sha256:" + "0" * 65, "sha512:" + "0" * 64,
                                  "sha256:" + "0" * 63 + "\n", "sha256:" + "٣" * 64])
def test_digests(text: str) -> None:
    assert validate.is_digest(text) == bool(DIGEST_RE.fullmatch(text))


@pytest.mark.parametrize("text", ["2026-11-25T20:22:05Z", "2026-11-25T20:22:05+00:00",
                                  "2026-11-25 20:22:05Z", "2026-11-25T20:22:0Z",
                                  "٢٠٢٦-11-25T20:22:05Z", "2026-11-25T20:22:05z",
                                  "²026-11-25T20:22:05Z", "", "2026-11-25T20:22:05Z\n"])
def test_utc_times(text: str) -> None:
    assert is_utc_time(text) == bool(UTC_TIME_RE.fullmatch(text))


@settings(max_examples=2000, deadline=None)
@given(EDGY)
def test_mountinfo_fields(text: str) -> None:
    assert overlay.decode_mountinfo_field(text) == \
        OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), text)


@settings(max_examples=2000, deadline=None)
@given(EDGY)
def test_option_unescaping(text: str) -> None:
    assert overlay.unescape_option(text) == re.sub(r"\\(.)", r"\1", text)
    assert overlay.unescape_option(overlay.escape_option(text)) == text


# --- records: named tuples without collections -----------------------------------
def test_records_behave_as_named_tuples() -> None:
    import collections
    import pickle

    from stacko.records import Instance, replace

    Twin = collections.namedtuple("Instance", ["image", "layer", "created"], defaults=[""])
    for args, kwargs in [(("a", "b"), {}), (("a", "b", "c"), {}), ((), {"layer": "b", "image": "a"}),
                         (("a",), {"layer": "b", "created": "c"})]:
        ours, theirs = Instance(*args, **kwargs), Twin(*args, **kwargs)
        assert tuple(ours) == tuple(theirs) and repr(ours) == repr(theirs)
        assert (ours.image, ours.layer, ours.created) == (theirs.image, theirs.layer, theirs.created)
        assert pickle.loads(pickle.dumps(ours)) == ours
    assert replace(Instance("a", "b"), created="t") == Instance("a", "b", "t")
    assert Instance._fields == Twin._fields and Instance("a", "b")._asdict() == Twin("a", "b")._asdict()
    for args, kwargs in [(("a",), {}), (("a", "b", "c", "d"), {}), (("a", "b"), {"image": "x"}),
                         (("a", "b"), {"size": 1})]:
        with pytest.raises(TypeError):
            Instance(*args, **kwargs)
        with pytest.raises(TypeError):
            Twin(*args, **kwargs)
    with pytest.raises(ValueError):
        replace(Instance("a", "b"), size=1)
    with pytest.raises(AttributeError):
        Instance("a", "b").image = "c"         # immutable

"""What the README promises a newcomer, held to the code (issue 23)."""
from __future__ import annotations

import re
from pathlib import Path

from stacko import state

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_the_on_disk_layout_names_every_entry_of_a_root() -> None:
    layout = README[README.index("## State on disk"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    # the entries state.py's docstring lists: lock, images.json, …, .stacko-root
    entries = re.findall(r"^    (\S+)\s", state.__doc__ or "", re.M)
    assert ".stacko-root" in entries and "lock" in entries
    for entry in entries:
        assert f"  {entry} " in layout, entry


def test_the_readme_says_how_to_build_the_man_page_and_the_completion() -> None:
    for target in ("make man", "make completion", "build/stacko.8", "build/stacko.bash"):
        assert target in README, target
    makefile = (REPO / "Makefile").read_text()
    assert "\nman: build/stacko.8" in makefile and "\ncompletion: build/stacko.bash" in makefile

"""stacko df with 1,000 images beside list-images of the same root.

df reads each image's size from images.json (recorded when the image was
sealed) and measures only the instances, so over many images it should cost
about what a listing costs: the goal is at most twice list-images.  A second
row measures a root whose image records carry no size (written before sizes
were recorded), where df must walk every layer.
"""
from __future__ import annotations

import os

import common
from stacko import stackpoints
from stacko.records import Image
from stacko.state import Store

TITLE = "df with 1,000 images vs list-images of the same root"
IMAGES = 1000
POINTS = 10
FILES = 3             # small files in each image's layer
ROUNDS = 30
GOAL_RATIO = 2.0


def build(store: Store) -> None:
    names = common.build_forest(store, IMAGES, "img")
    with store.locked(exclusive=True):
        images = store.load_images()
        for name in names:
            layer = store.layer_path(images[name].layer)
            for n in range(FILES):
                with open(os.path.join(layer, f"f{n}"), "wb") as f:
                    f.write(b"x" * (100 * (n + 1)))
    with common.mount_table_snapshot():
        for n in range(POINTS):
            stackpoints.new_stackpoint(store, f"p{n}", names[-1 - n * 37])


def record_sizes(store: Store, sized: bool) -> bool:
    """Give every image record its size (as sealing does), or take it away;
    False when this stacko's Image record has no size field."""
    if "size" not in Image._fields:
        return False
    with store.locked(exclusive=True):
        images = store.load_images()
        size = sum(100 * (n + 1) for n in range(FILES))
        store.save_images({name: image._replace(size=size if sized else None)
                           for name, image in images.items()})
    return True


def run() -> list[dict[str, object]]:
    with common.scratch_root("df") as scratch:
        store = Store(os.path.join(scratch, "root"))
        build(store)
        stacko = common.stacko_argv() + ["--root", store.root]
        commands = {"list": stacko + ["list-images"], "df": stacko + ["df"],
                    "json": stacko + ["df", "--json"]}

        def measure() -> dict[str, list[float]]:
            cases = {key: (lambda key=key, argv=argv: {key: common.timed(lambda: common.run(argv))})
                     for key, argv in commands.items()}
            return common.interleave(cases, common.repeats(ROUNDS))

        has_sizes = record_sizes(store, True)
        recorded = measure()
        if has_sizes:
            record_sizes(store, False)
            measured = measure()
        else:
            measured = recorded      # no size field yet: df measured every layer above

    rows = []
    base = "list-images"
    for label, samples in (("sizes recorded", recorded) if has_sizes else (None, None),
                           ("sizes measured (old records)", measured)):
        if label is None or samples is None:
            continue
        ms = {key: common.median_ms(v) for key, v in samples.items()}
        rows.append(common.row(f"df, {IMAGES} images, {label}", ms["df"], base, ms["list"], "ms",
                               f"<= {GOAL_RATIO:g}x list-images",
                               ms["df"] <= GOAL_RATIO * ms["list"],
                               n=len(samples["df"]),
                               stacko_spread=round(common.spread_ms(samples["df"]), 2),
                               baseline_spread=round(common.spread_ms(samples["list"]), 2)))
        rows.append(common.row(f"df --json, {label}", ms["json"], base, ms["list"], "ms", "-",
                               None))
    return rows

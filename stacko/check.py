"""stacko check [--repair]: compare the metadata, the layer directories and the
kernel's mount table, and report (or repair) every mismatch.

What a killed or failed command can leave, given the order the commands keep
(directories before records, unmount before forget, forget before remove):

* a layer directory ``l/ID`` that no record names (new-image, new-stackpoint,
  cutover killed between making the layer and recording it; delete-* killed
  between forgetting and removing; import-image killed between moving its
  layers into ``l/`` and recording them);
* a workdir ``w/ID`` without its layer;
* staging directories under ``tmp/`` (import-image, export-image);
* an edit mount left open, a stackpoint mounted on an instance that is no
  longer current (a switch killed between recording and mounting), overlay
  mounts of layers that no record names;
* temporary files of images.json and stackpoints.json (a command killed before
  its rename);
* a layer that is both an image's and an instance's (commit-stackpoint killed
  between its two metadata writes).

Repairs never lose user data: an unnamed layer is removed only when it is
empty; one that holds files is moved to ``orphans/ID`` and named in the report.
Records whose directories are missing are only reported: that usually means a
filesystem is not mounted, and forgetting the records would make it permanent.
"""
from __future__ import annotations

import os

from stacko import images as images_mod
from stacko import mounttable, words
from stacko.errors import StackoError
from stacko.log import log
from stacko.state import Store
from stacko.checkfiles import (ORPHANS, Problem, interrupted_commits, listdir, metadata_temps,
                               missing_directories, named_layers, staging_leftovers,
                               stray_manifests, unnamed_layers)
from stacko.checkmounts import (edit_mounts, interrupted_checks, mount_layers, stackpoint_mounts,
                                stale_mounts)


class Report(list):
    """The report lines; ``remaining`` counts the problems left unrepaired."""

    remaining: int = 0
    repairable: int = 0     # of those, how many --repair has a repair for

    def __init__(self) -> None:
        super().__init__()
        self.todo: list[str] = []   # what to do by hand, for the problems without a repair


def check(store: Store, repair: bool = False, content: bool = False) -> Report:
    report = Report()
    with store.locked(exclusive=repair):
        # Records that fail validation come first, and alone: every other check
        # (and every repair) acts on the records, and stacko acts on none it
        # cannot trust.
        bad = [Problem(text, cannot="stacko does not guess what a bad record meant: fix it "
                                    "by hand, or restore the file from a backup")
               for text in store.violations()]
        # Mounts first: repairing a stale mount frees the layer beneath it, which
        # the second phase then sees unmounted.  Content last, and only when
        # asked: it reads every byte of every image.
        phases = [mount_problems, directory_problems] + ([content_problems] if content else [])
        repaired = 0
        for phase in ((lambda store: bad),) if bad else phases:
            for problem in phase(store):
                line, left = settle(problem, repair)
                report.append(line)
                report.remaining += left
                report.repairable += left and problem.repair is not None
                if left and problem.repair is None and problem.cannot not in report.todo:
                    report.todo.append(problem.cannot)
                repaired += repair and not left
        if repaired:
            sync_repairs(store)
        if not report:      # say what "nothing wrong" covered: a wrong --root shows
            log(f"stacko: check: nothing wrong in {store.root} ({looked_at(store)})")
    n, s = report.remaining, "s" if report.remaining != 1 else ""
    if n and repair:
        log(f"stacko: error: check: {n} problem{s} could not be repaired")
    elif n:
        log(f"stacko: error: check: {n} problem{s} found")
        log("stacko: hint: fix the records named above by hand (or restore the files "
                "from a backup); the other checks run once they are valid" if bad else
                "stacko: hint: `stacko check --repair` fixes what it can without losing data"
                if report.repairable else
                "stacko: hint: --repair has no repair for these: "
                + "; ".join(report.todo[:3]) + ("; …" if len(report.todo) > 3 else ""))
    elif repair and report:
        log("stacko: check: every problem was repaired")
    return report


def sync_repairs(store: Store) -> None:
    """Make what --repair removed, moved or made durable before it says so: the
    journal may commit seconds later, and a power cut meanwhile would bring the
    leftovers back.  An fsync of each directory it changes, not a syncfs: a few
    calls, whatever else keeps the filesystem busy."""
    from stacko import content, durable
    for path in (store.layers_dir, store.work_dir, content.manifest_dir(store.root),
                 store.tmp_dir, store.edit_dir, os.path.join(store.root, ORPHANS), store.root):
        if os.path.isdir(path):
            try:
                durable.fsync_path(path)
            except OSError as e:
                raise StackoError(f"cannot sync {path}: {e.strerror}; the repairs may not "
                                  "survive a power cut", hint="check the disk (dmesg)") from None


def looked_at(store: Store) -> str:
    images = store.load_images()
    points = store.load_stackpoints()
    instances = sum(len(p.instances) for p in points.values())
    mounts = sum(1 for m in mounttable.mounts() if mount_layers(store, m))
    return (f"checked {words.count(len(images), 'image')}, "
            f"{words.count(len(points), 'stackpoint')} with "
            f"{words.count(instances, 'instance')}, "
            f"{words.count(len(listdir(store.layers_dir)), 'layer directory', 'layer directories')}"
            f" and {words.count(mounts, 'overlay mount')} of its layers")


def settle(problem: Problem, repair: bool) -> tuple[str, int]:
    """The report line of one problem, repaired if asked; and 1 if it remains."""
    if not repair:
        return problem.text, 1
    if problem.repair is None:
        return f"{problem.text}; not repaired: {problem.cannot}", 1
    try:
        return f"{problem.text}; repaired: {problem.repair()}", 0
    except StackoError as e:
        return f"{problem.text}; not repaired: {e.message}", 1
    except OSError as e:
        return f"{problem.text}; not repaired: {e.strerror or e}", 1


def mount_problems(store: Store) -> list[Problem]:
    images = store.load_images()
    points = store.load_stackpoints()
    table = mounttable.mounts()
    return (interrupted_checks(store, points) + stackpoint_mounts(store, images, points, table)
            + edit_mounts(store, images, table)
            + stale_mounts(store, named_layers(images, points), table))


def directory_problems(store: Store) -> list[Problem]:
    images = store.load_images()
    points = store.load_stackpoints()
    table = mounttable.mounts()
    named = named_layers(images, points)
    return (interrupted_commits(store, images, points)
            + missing_directories(store, images, points)
            + unnamed_layers(store, named, table) + staging_leftovers(store, table)
            + stray_manifests(store, images) + metadata_temps(store))


# --- the mount table ---------------------------------------------------------------


# --- records and directories -------------------------------------------------------


# --- content (--content) -------------------------------------------------------------
def content_problems(store: Store) -> list[Problem]:
    """verify-image of every image: one problem per difference from its manifest."""
    from stacko.changes import show_path
    problems = []
    for name, image in sorted(store.load_images().items()):
        if not os.path.isdir(store.layer_path(image.layer)):
            continue          # missing_directories() reports it
        try:
            found = images_mod.verify_image(store, name)
        except StackoError as e:
            problems.append(Problem(e.message, cannot=e.hint or "see the message"))
            continue
        for kind, path in found:
            what = {"M": "changed", "-": "missing", "+": "extra"}[kind]
            problems.append(Problem(
                f"image {name!r}: {kind} {show_path(path)} ({what} since it was sealed)",
                cannot=f"image {name!r} was changed or damaged outside stacko: "
                       f"`stacko verify-image {name}` lists the differences; import or pull "
                       f"it again under a new name, cut over to that, then `stacko "
                       f"delete-image {name}`"))
    return problems

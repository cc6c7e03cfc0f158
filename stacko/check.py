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

import contextlib
import os
import stat

from stacko import images as images_mod
from stacko import layers, overlay, run, stackpoints, words
from stacko.errors import StackoError
from stacko.records import Image, Instance, Stackpoint, record, replace
from stacko.state import Store, remove_tree

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable

ORPHANS = "orphans"       # <root>/orphans/ID: unnamed layers that held files


@record
class Problem:
    text: str
    repair: Callable[[], str] | None = None   # returns what it did; raises if it could not
    cannot: str = ""                             # why there is no repair


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
            run.log(f"stacko: check: nothing wrong in {store.root} ({looked_at(store)})")
    n, s = report.remaining, "s" if report.remaining != 1 else ""
    if n and repair:
        run.log(f"stacko: error: check: {n} problem{s} could not be repaired")
    elif n:
        run.log(f"stacko: error: check: {n} problem{s} found")
        run.log("stacko: hint: fix the records named above by hand (or restore the files "
                "from a backup); the other checks run once they are valid" if bad else
                "stacko: hint: `stacko check --repair` fixes what it can without losing data"
                if report.repairable else
                "stacko: hint: --repair has no repair for these: "
                + "; ".join(report.todo[:3]) + ("; …" if len(report.todo) > 3 else ""))
    elif repair and report:
        run.log("stacko: check: every problem was repaired")
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
    mounts = sum(1 for m in overlay.mounts() if mount_layers(store, m))
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
    table = overlay.mounts()
    return (interrupted_checks(store, points) + stackpoint_mounts(store, images, points, table)
            + edit_mounts(store, images, table)
            + stale_mounts(store, named_layers(images, points), table))


def directory_problems(store: Store) -> list[Problem]:
    images = store.load_images()
    points = store.load_stackpoints()
    table = overlay.mounts()
    named = named_layers(images, points)
    return (interrupted_commits(store, images, points)
            + missing_directories(store, images, points)
            + unnamed_layers(store, named, table) + staging_leftovers(store, table)
            + stray_manifests(store, images) + metadata_temps(store))


def named_layers(images: dict[str, Image], points: dict[str, Stackpoint]) -> dict[str, str]:
    """Layer id -> what names it."""
    named = {i.layer: f"image {i.name!r}" for i in images.values()}
    for point in points.values():
        for inst in point.instances:
            named.setdefault(inst.layer, f"the instance of {inst.image!r} of stackpoint "
                                         f"{point.name!r}")
    return named


def listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def is_empty(path: str) -> bool:
    try:
        return not os.listdir(path)
    except OSError:
        return False


# --- the mount table ---------------------------------------------------------------
def mount_layers(store: Store, m: overlay.Mount) -> set[str]:
    """The layer ids an overlay mount uses (upper, work and lowers)."""
    return overlay.layers_of(m, store.layers_dir, store.work_dir)


def instance_of_mount(store: Store, point: Stackpoint, m: overlay.Mount) -> Instance | None:
    upper = m.option("upperdir") if m.fstype == "overlay" else None
    for inst in point.instances:
        if upper in (inst.layer, store.layer_path(inst.layer)):
            return inst
    return None


def stackpoint_mounts(store: Store, images: dict[str, Image], points: dict[str, Stackpoint],
                      table: list[overlay.Mount]) -> list[Problem]:
    problems = []
    for name in sorted(points):
        point = points[name]
        if point.checking is not None:
            continue      # being checked, or interrupted_checks() undoes it
        directory = store.stackpoint_dir(point)
        resolved = os.path.realpath(directory)
        if resolved != directory:
            problems.append(Problem(
                f"stackpoint {name!r}: its directory was {directory} and now resolves to "
                f"{resolved}; stacko refuses to mount or unmount it there",
                cannot=f"put the directory back at {directory}"))
            continue
        stacked = overlay.stacked_at(directory, table)
        if not stacked:
            continue
        top = stacked[-1]
        inst = instance_of_mount(store, point, top)
        if inst is None:
            problems.append(Problem(
                f"stackpoint {name!r}: something else is mounted at {directory} "
                f"({top.fstype} from {top.source})",
                cannot=f"not stacko's mount; unmount it with `umount {directory}`"))
        elif inst.image != point.current or len(stacked) > 1:
            what = (f"has its instance of {inst.image!r} mounted, but its current instance "
                    f"is of {point.current!r}" if inst.image != point.current else
                    f"has {len(stacked)} mounts stacked at {directory}")
            problems.append(Problem(f"stackpoint {name!r} {what} (an interrupted switch)",
                                    lambda point=point: remount_current(store, images, point)))
    return problems


def interrupted_checks(store: Store, points: dict[str, Stackpoint]) -> list[Problem]:
    """Checked cutovers whose command died during the check: undone (see checked.py)."""
    from stacko import events
    problems = []
    for name in sorted(points):
        pending = points[name].checking
        if pending is None or events.check_alive(pending):
            continue
        on = (f"; it is on {pending.image!r}, which never passed its check"
              if points[name].current == pending.image else "")
        problems.append(Problem(
            f"stackpoint {name!r}: the checked cutover to {pending.image!r} was interrupted "
            f"during its check (process {pending.pid} is gone){on}",
            lambda name=name: undo_check(store, name)))
    return problems


def undo_check(store: Store, name: str) -> str:
    point = stackpoints.get(store.load_stackpoints(), name)
    pending = point.checking
    assert pending is not None
    if stackpoints.mounted_instance(store, point) is not None:
        overlay.require_root("check --repair")
    stackpoints.undo_interrupted_check(store, name, mount=False)
    if point.current != pending.image:
        return "forgot the record: the stackpoint had moved on since"
    if point.instance(pending.previous) is None:
        return (f"forgot the record; nothing to fall back to: its instance of "
                f"{pending.previous!r} is gone")
    return f"fell back to {pending.previous!r}, as the failed check would have"


def remount_current(store: Store, images: dict[str, Image], point: Stackpoint) -> str:
    """Unmount what is not the current instance, then mount the current one."""
    overlay.require_root("check --repair")
    directory = store.stackpoint_dir(point)
    done = []
    for _ in range(16):
        stacked = overlay.stacked_at(directory, overlay.mounts())
        if not stacked:
            stackpoints._mount(store, images, point, point.current_instance())
            done.append(f"mounted its current instance of {point.current!r}")
            break
        inst = instance_of_mount(store, point, stacked[-1])
        if inst is None:
            raise StackoError(f"something else is mounted at {directory}")
        if inst.image == point.current and len(stacked) == 1:
            break
        overlay.umount(directory)
        done.append(f"unmounted its instance of {inst.image!r}")
    return ", then ".join(done) or "nothing left to do"


def edit_mounts(store: Store, images: dict[str, Image],
                table: list[overlay.Mount]) -> list[Problem]:
    problems = []
    for m in table:
        if os.path.dirname(m.mount_point) != store.edit_dir:
            continue
        name = os.path.basename(m.mount_point)
        if name not in images:
            problems.append(Problem(f"stale mount at {m.mount_point}: no image {name!r}",
                                    lambda m=m: unmount(m.mount_point)))
        else:
            mode = "read-only" if m.read_only else "for editing"
            problems.append(Problem(
                f"image {name!r} is open {mode} at {m.mount_point} "
                f"(edit-image without close-image)",
                lambda m=m: unmount(m.mount_point) + " (as close-image does)"))
    mounted = {m.mount_point for m in table}
    for name in listdir(store.edit_dir):
        path = store.edit_path(name)
        if path not in mounted and is_empty(path):
            problems.append(Problem(f"leftover empty directory {path}",
                                    lambda path=path: remove_empty(path)))
    return problems


def unmount(path: str) -> str:
    overlay.require_root("check --repair")
    overlay.umount(path)
    with contextlib.suppress(OSError):
        os.rmdir(path)
    return f"unmounted {path}"


def remove_empty(path: str) -> str:
    os.rmdir(path)
    return f"removed {path}"


def stale_mounts(store: Store, named: dict[str, str],
                 table: list[overlay.Mount]) -> list[Problem]:
    """Overlay mounts of layers that no record names (or under tmp/)."""
    problems = []
    for m in table:
        if os.path.dirname(m.mount_point) == store.edit_dir:
            continue          # edit_mounts() says what is wrong with those
        unnamed = sorted(layer for layer in mount_layers(store, m) if layer not in named)
        if unnamed:
            problems.append(Problem(
                f"stale mount at {m.mount_point}: it uses layer"
                f"{'s' if len(unnamed) > 1 else ''} {', '.join(unnamed)} that no record names",
                lambda m=m: unmount(m.mount_point)))
        elif m.mount_point.startswith(store.tmp_dir + "/"):
            problems.append(Problem(f"stale mount at {m.mount_point}",
                                    lambda m=m: unmount(m.mount_point)))
    return problems


# --- records and directories -------------------------------------------------------
def interrupted_commits(store: Store, images: dict[str, Image],
                        points: dict[str, Stackpoint]) -> list[Problem]:
    from stacko import changes
    problems = []
    for point_name, image_name, layer in changes.interrupted_commits(images, points):
        problems.append(Problem(
            f"layer {store.layer_path(layer)} is both image {image_name!r}'s and an instance of "
            f"stackpoint {point_name!r} (an interrupted commit-stackpoint)",
            lambda p=point_name, i=image_name, l=layer: finish_commit(store, p, i, l)))
    return problems


def finish_commit(store: Store, point_name: str, image_name: str, layer: str) -> str:
    """Give the layer to the image for good: the stackpoint loses that instance and,
    if it was current, gets a fresh instance of the image (same files as before)."""
    images = store.load_images()
    points = store.load_stackpoints()
    point = points[point_name]
    old = next(i for i in point.instances if i.layer == layer)
    was_current = old.image == point.current
    directory = store.stackpoint_dir(point)
    mounted = stackpoints.mounted_instance(store, point)
    if mounted is not None and mounted == old:
        overlay.require_root("check --repair")
        overlay.umount(directory)
    else:
        mounted = None
    new = point.without_instance(old.image)
    fresh = None
    if was_current:
        existing = new.instance(image_name)
        if existing is None:
            fresh = Instance(image=image_name, layer=store.new_layer(),
                             created=images_mod.now())
            new = new.with_instance(fresh)
        new = replace(new, current=image_name)
    try:
        store.save_stackpoints({**points, point_name: new})
    except BaseException:
        if fresh is not None:
            layers.remove_layer(store, fresh.layer)
        raise
    done = f"the instance of {old.image!r} became image {image_name!r}"
    if was_current:
        done += f"; stackpoint {point_name!r} is on an instance of {image_name!r}"
    if mounted is not None:
        stackpoints._mount(store, images, new, new.current_instance())
        done += ", mounted"
    return done


def missing_directories(store: Store, images: dict[str, Image],
                        points: dict[str, Stackpoint]) -> list[Problem]:
    problems = []
    owners: list[tuple[str, str]] = [(f"image {i.name!r}", i.layer)
                                     for _, i in sorted(images.items())]
    for name in sorted(points):
        owners += [(f"the instance of {i.image!r} of stackpoint {name!r}", i.layer)
                   for i in points[name].instances]
    for what, layer in owners:
        path = store.layer_path(layer)
        if not os.path.isdir(path):
            problems.append(Problem(
                f"{what}: its layer {path} is missing",
                cannot="its data is gone or on a filesystem that is not mounted; restore it, "
                       "or delete the record with stacko's delete commands"))
        elif not os.path.isdir(store.work_path(layer)):
            problems.append(Problem(f"{what}: its workdir {store.work_path(layer)} is missing",
                                    lambda layer=layer: make_workdir(store, layer)))
    return problems


def make_workdir(store: Store, layer: str) -> str:
    os.makedirs(store.work_dir, mode=0o700, exist_ok=True)
    os.mkdir(store.work_path(layer), 0o700)
    return f"made {store.work_path(layer)}"


def unnamed_layers(store: Store, named: dict[str, str],
                   table: list[overlay.Mount]) -> list[Problem]:
    problems = []
    used: set[str] = set()
    for m in table:
        used |= mount_layers(store, m)
    for layer in listdir(store.layers_dir):
        if layer in named:
            continue
        path = store.layer_path(layer)
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            problems.append(Problem(f"{path} is not a layer directory",
                                    cannot="stacko never makes one; look at it and remove it"))
            continue
        if layer in used:
            problems.append(Problem(f"layer {path}: no record names it, and it is mounted",
                                    cannot="unmount the stale mount first (see above)"))
            continue
        if is_empty(path):
            problems.append(Problem(
                f"layer {path}: no record names it (empty: left by an interrupted command)",
                lambda layer=layer: remove_layer(store, layer)))
        else:
            problems.append(Problem(
                f"layer {path}: no record names it, and it holds files "
                "(left by an interrupted command)",
                lambda layer=layer: keep_orphan(store, layer)))
    for layer in listdir(store.work_dir):
        if layer in named or os.path.lexists(store.layer_path(layer)):
            continue
        path = store.work_path(layer)
        if layer in used or overlay.mounts_under(path, table):
            problems.append(Problem(f"workdir {path}: its layer is gone, and it is mounted",
                                    cannot="unmount the stale mount first"))
            continue
        problems.append(Problem(f"workdir {path} has no layer",
                                lambda path=path: remove_path(path)))
    return problems


def remove_layer(store: Store, layer: str) -> str:
    layers.remove_layer(store, layer)
    return f"removed it (and {store.work_path(layer)})"


def remove_path(path: str) -> str:
    if overlay.mounts_under(path):
        raise StackoError(f"{path} has a mount beneath it")
    remove_tree(path)
    return "removed it"


def keep_orphan(store: Store, layer: str) -> str:
    """Keep the files, out of the way: <root>/orphans/ID."""
    path = store.layer_path(layer)
    if overlay.mounts_under(path):
        raise StackoError(f"{path} has a mount beneath it")
    orphans = os.path.join(store.root, ORPHANS)
    os.makedirs(orphans, mode=0o700, exist_ok=True)
    target = os.path.join(orphans, layer)
    if os.path.lexists(target):
        raise StackoError(f"{target} exists already")
    try:
        os.rename(path, target)
    except FileNotFoundError:
        # Removed meanwhile: the rm of a killed delete goes on after it.
        remove_path(store.work_path(layer))
        return "it was gone already"
    remove_path(store.work_path(layer))
    return f"kept its files: moved it to {target}; remove that when you no longer need it"


def staging_leftovers(store: Store, table: list[overlay.Mount]) -> list[Problem]:
    from stacko import staging

    problems = []
    for entry in store.staging_entries():     # only stacko's own names, in a stacko root
        path = os.path.join(store.tmp_dir, entry)
        if staging.in_use(path):
            continue      # an import, pull or export at work right now (they hold no lock)
        if overlay.mounts_under(path, table):
            problems.append(Problem(f"leftover staging directory {path} has a mount beneath it",
                                    cannot="unmount it first"))
            continue
        problems.append(Problem(f"leftover staging directory {path} (an interrupted "
                                "import-image or export-image)",
                                lambda path=path: remove_path(path)))
    return problems


def stray_manifests(store: Store, images: dict[str, Image]) -> list[Problem]:
    """Content manifests (m/ID.json) of layers that no image has, and temporary
    files of manifests whose writing was interrupted."""
    from stacko import content
    directory = content.manifest_dir(store.root)
    mine = {i.layer for i in images.values()}
    problems = []
    for entry in listdir(directory):
        path = os.path.join(directory, entry)
        if entry.startswith(".") and entry.endswith(".tmp"):
            problems.append(Problem(f"leftover temporary file {path} (an interrupted command)",
                                    lambda path=path: remove_file(path)))
        elif entry.endswith(".json") and entry[:-len(".json")] not in mine:
            problems.append(Problem(f"content manifest {path}: no image has layer "
                                    f"{entry[:-len('.json')]} (left by an interrupted command)",
                                    lambda path=path: remove_file(path)))
    return problems


def metadata_temps(store: Store) -> list[Problem]:
    """Temporary files of images.json and stackpoints.json (state.atomic_write) left
    by a command killed before its rename.  Only a writer, under the exclusive
    lock, ever has one: check holds the lock, so every one found is a leftover."""
    problems = []
    for entry in listdir(store.root):
        base, dot, tail = entry[1:].rpartition(".")
        if entry.startswith(".") and dot and tail == "tmp" and \
                base.rpartition(".")[0] in ("images.json", "stackpoints.json"):
            path = os.path.join(store.root, entry)
            problems.append(Problem(f"leftover temporary file {path} (an interrupted command)",
                                    lambda path=path: remove_file(path)))
    return problems


def remove_file(path: str) -> str:
    try:
        os.unlink(path)
    except FileNotFoundError:      # removed with its layer by a repair above
        return "removed with its layer"
    return "removed it"


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

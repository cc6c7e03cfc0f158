"""update-stackpoint: keep a stackpoint on the image a registry tag names.

1. Under a lock of this stackpoint's updates (``<root>/tmp/update-POINT.lock``,
   never the root's lock: a download may take minutes, and listings, boot
   mounts and other stackpoints must not wait for it), one GET of REF's
   manifest (the platform's manifest of an index, chosen as pull-image does).
2. Its digest names the image: ``<last component of REPO>.<16 hex digits of
   the digest>`` (image_name), the same on every host of that platform.  The
   stackpoint runs it already: a line on stderr, and the check recorded (below).
3. Otherwise the image is claimed (recorded as this update's) and pulled, pinned
   to that digest, the trust policy judging REF before any layer travels; then
   the cutover, checked or tentative as cutover-stackpoint's.  A refusal by the
   policy is recorded too; any other failure leaves the stackpoint as it was.
4. --keep N: prune-stackpoint --keep N, then the images that only the pruned
   instances used and that this stackpoint's updates pulled from REF's repository.

The stackpoint's record keeps ``follows``: {"ref", "digest" and "checked" (what
REF named at the last look, and when), "images": {name: "HOST/REPO@DIGEST"}}
(the images its updates pulled, which alone --keep may delete).  A look that
finds nothing new records its time and one ``update-current`` event, which the
next such look replaces rather than adds to: an hourly timer must not push
the cutovers and fallbacks out of the last MAX_EVENTS.  An image the
stackpoint fell back from (a failed check, a boot fallback, fallback-stackpoint)
is not cut over to again until REF names another image.
"""
from __future__ import annotations

import os

from stacko import events, overlay, stackpoints
from stacko.errors import AlreadyExists, CorruptState, StackoError, UsageError
from stacko.log import log
from stacko.records import Stackpoint, replace
from stacko.registry import look
from stacko.registry.client import Client, Options
from stacko.registry.ref import Reference, parse
from stacko.state import Store

HEX = 16                    # digits of the digest in an image's name
FELL_BACK = ("check-failed", "boot-fallback", "fallback")
CURRENT = "update-current"  # the event of a look that found nothing new
REFUSED = "update-refused"


def image_name(ref: Reference, digest: str) -> str:
    """The name of the image REF's manifest digest names: valid ([a-z0-9] begins
    a repository component) and the same on every host."""
    base = ref.repo.rpartition("/")[2][:127 - HEX]
    return f"{base}.{digest[len('sha256:'):][:HEX]}"


def follows_of(point: Stackpoint, source: str) -> dict:
    """The update record of a stackpoint ({} when it never was updated)."""
    f = point.follows or {}
    owned = f.get("images", {})
    if not isinstance(owned, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in owned.items()):
        raise CorruptState(f"{source}: stackpoint {point.name!r}: field 'follows' is not what "
                           "update-stackpoint writes")
    return {**f, "images": dict(owned)}


def fell_back_from(point: Stackpoint, image: str) -> events.Event | None:
    """The last event that moved the stackpoint away from image, if no later one
    went back to it."""
    for e in reversed(point.events):
        if e.to == image and e.from_ != image:
            return None
        if e.from_ == image and e.action in FELL_BACK:
            return e
    return None


class UpdateLock:
    """One update of a stackpoint at a time; the second waits for the first.
    A class, not a contextlib.contextmanager: see rootlock.Locked."""

    def __init__(self, store: Store, name: str) -> None:
        self.path = store.update_lock_path(name)
        self.name, self.fd = name, -1

    def __enter__(self) -> None:
        import fcntl
        from stacko.rootlock import open_lock_file, same_file, wait_for_lock
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        told = False
        while True:
            self.fd = open_lock_file(self.path, True)
            try:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    if not told:
                        log(f"stacko: another update of stackpoint {self.name!r} is running; "
                            "waiting for it to finish")
                        told = True
                    wait_for_lock(self.fd, fcntl.LOCK_EX, self.path)
            except BaseException:
                os.close(self.fd)
                raise
            # delete-stackpoint removes the lock of a stackpoint it deletes, under
            # that lock: one removed while this waited is not the lock any more.
            if same_file(self.fd, self.path):
                return
            os.close(self.fd)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class Update:
    def __init__(self, store: Store, name: str, ref_text: str, platform: str | None = None,
                 options: Options = Options(), policy: str | None = None,
                 registries_d: str | None = None, check: str | None = None,
                 check_timeout: float = 60.0, tries: int | None = None,
                 keep: int | None = None) -> None:
        self.store, self.name, self.ref_text = store, name, ref_text
        self.ref = parse(ref_text)
        self.platform_text, self.platform = platform, look.parse_platform(platform)
        self.options, self.policy, self.registries_d = options, policy, registries_d
        self.check, self.check_timeout, self.tries = check, check_timeout, tries
        if keep is not None and keep < 1:
            raise UsageError(f"--keep {keep}: update-stackpoint keeps at least the instance "
                             "it would fall back to", hint="give --keep 1 or more")
        self.keep = keep
        self.client = Client(self.ref, options)

    # --- the look ---------------------------------------------------------------
    def look(self) -> tuple[str, str]:
        """(digest, image name) of what REF names now."""
        try:
            digest = look.manifest_digest(self.client, self.ref, self.platform)
        except StackoError as e:
            e.message = f"cannot look up {self.ref_text} for stackpoint {self.name!r}: " \
                        f"{e.message}; stackpoint left as it was"
            raise
        return digest, image_name(self.ref, digest)

    def origin(self, digest: str) -> str:
        return f"{self.ref.host}/{self.ref.repo}@{digest}"

    def load(self) -> tuple[dict, dict, Stackpoint, dict]:
        store = self.store
        images, points = store.load_images(), store.load_stackpoints()
        point = stackpoints.get(points, self.name)
        return images, points, point, follows_of(point, store.stackpoints_file)

    def refuse_foreign(self, images: dict, points: dict, target: str, digest: str) -> None:
        """An image of that name that no update pulled from this digest is an admin's."""
        if target in images and not any(
                follows_of(p, "").get("images", {}).get(target) == self.origin(digest)
                for p in points.values()):
            raise AlreadyExists(f"image {target!r} exists and was not pulled by "
                                f"update-stackpoint from {self.origin(digest)}; not updating "
                                f"stackpoint {self.name!r}",
                                hint=f"rename or delete that image: the update names the "
                                     f"image of {self.ref_text} {target!r}")

    def record(self, digest: str, images: dict | None = None, event: tuple | None = None,
               drop: tuple = ()) -> None:
        """Write the stackpoint's update record (and an event) in one atomic write."""
        store = self.store
        with store.locked(exclusive=True):
            _, points, point, follows = self.load()
            owned = follows["images"]
            for n in drop:
                owned.pop(n, None)
            owned.update(images or {})
            new = replace(point, follows={"ref": self.ref_text, "digest": digest,
                                          "checked": events.now(), "images": owned})
            if event is not None:
                if event[0] == CURRENT and point.events and point.events[-1].action == CURRENT:
                    new = replace(new, events=point.events[:-1])
                new = events.add(new, event[0], point.current, point.current, event[1])
            store.save_stackpoints({**points, self.name: new})

    # --- the update -------------------------------------------------------------
    def run(self, dry_run: bool = False) -> bool:
        """True when the stackpoint was switched."""
        with self.store.locked(exclusive=False):
            self.load()            # the stackpoint exists, its record is readable
        if dry_run:
            return self._run(True)
        overlay.require_root("update-stackpoint")
        with UpdateLock(self.store, self.name):
            return self._run(False)

    def _run(self, dry_run: bool) -> bool:
        digest, target = self.look()
        with self.store.locked(exclusive=False):
            images, points, point, follows = self.load()
        self.refuse_foreign(images, points, target, digest)
        shown = f"{self.ref_text} ({digest})"
        if point.current == target:
            log(f"stacko: {self.name} is up to date with {shown}")
            if not dry_run:
                self.record(digest, event=(CURRENT, f"up to date with {shown}"))
            return False
        left = fell_back_from(point, target)
        if left is not None:
            log(f"stacko: {self.name} stays on {point.current!r}: it fell back from "
                f"{target!r} ({shown}) at {left.time} ({left.action}); a new image on "
                f"{self.ref_text} or `stacko cutover-stackpoint {self.name} {target}` "
                "moves it")
            if not dry_run:
                self.record(digest, event=(CURRENT, f"stays on {point.current}: fell back "
                                                    f"from {target} ({shown}) at {left.time}"))
            return False
        if dry_run:
            self.tell(images, target, digest, shown)
            return False
        # Before anything travels: an unproven cutover is decided first.
        from stacko.tentative import refuse_if_tentative
        refuse_if_tentative(point, "update-stackpoint")
        if target not in images:
            self.fetch(images, target, digest, shown)
        else:
            self.record(digest, images={target: self.origin(digest)})
        why = f"update-stackpoint: {shown}"
        if self.check is not None:
            from stacko import checked
            checked.checked_cutover(self.store, self.name, target, self.check,
                                    timeout=self.check_timeout, tries=self.tries,
                                    action="update", why=why)
        else:
            stackpoints.cutover(self.store, self.name, target, tries=self.tries,
                                action="update", why=why)
        log(f"stacko: {self.name} updated from {point.current!r} to {target!r}, "
            f"{shown}")
        if self.keep is not None:
            self.prune(self.keep)
        return True

    def fetch(self, before: dict, target: str, digest: str, shown: str) -> None:
        from stacko import images as images_mod
        from stacko.registry import pull      # here: a look that finds nothing new needs none
        from stacko.signing.policy import PolicyRefused
        # Claimed before the pull: a pull killed half-way leaves a claim on a
        # name that does not exist, which the next update pulls again.
        self.record(digest, images={target: self.origin(digest)})
        from stacko.moved import Tally
        tally = Tally("pulled")
        try:
            pull.pull_image(self.store, target, self.ref_text, platform=self.platform_text,
                            options=self.options, policy=self.policy,
                            registries_d=self.registries_d, pin=digest, client=self.client,
                            tally=tally)
        except PolicyRefused as e:
            self.record(digest, drop=(target,), event=(REFUSED, f"{shown}: {e.message}"))
            raise
        except BaseException:
            try:
                self.record(digest, drop=(target,))
            except StackoError:
                pass
            raise
        log(tally.summary())
        with self.store.locked(exclusive=False):
            stack = images_mod.stack_of(self.store.load_images(), target)
        # The images of the stack that the pull made (reused ones are not ours).
        self.record(digest, images={i.name: self.origin(digest) for i in stack
                                    if i.name not in before})

    def tell(self, images: dict, target: str, digest: str, shown: str) -> None:
        """--dry-run: what the update would do, changing nothing."""
        if target in images:
            log(f"stacko: would switch {self.name} to image {target!r}, {shown}, "
                "already here: nothing to fetch")
            return
        from stacko import oci
        from stacko.registry import pull
        from stacko.signing.policy import PolicyRefused
        trust = pull.trust_checker(self.ref_text, self.policy, self.registries_d)
        try:
            specs = pull.resolve(self.client, self.ref._replace(digest=digest), self.platform,
                                 trust)
        except PolicyRefused as e:
            log(f"stacko: would refuse {shown}: {e.message}")
            return
        with self.store.locked(exclusive=False):
            planned = oci.plan_images(self.store, images, target, None, [], specs)
        new = [s for s, p in zip(specs, planned) if not p.layer]
        log(f"stacko: would switch {self.name} to image {target!r}, {shown}: "
            f"would fetch {len(new)} of {len(specs)} layers, "
            f"{sum(s.size or 0 for s in new)} bytes")

    # --- --keep ---------------------------------------------------------------------
    def prune(self, keep: int) -> None:
        from stacko import changes
        try:
            doomed = changes.prune(self.store, self.name, keep)
        except StackoError as e:
            log(f"stacko: warning: {self.name} was updated, but not pruned: {e.message}")
            return
        if doomed:
            self.delete_images(doomed)

    def delete_images(self, doomed: list[str]) -> None:
        """The images of the pruned instances' stacks that this stackpoint's updates
        pulled from REF's repository and that nothing else uses, top first."""
        from stacko import images as images_mod
        from stacko.errors import ImageInUse
        prefix = f"{self.ref.host}/{self.ref.repo}@"
        gone: list[str] = []
        with self.store.locked(exclusive=True):
            images, points, point, follows = self.load()
            keep = {point.current, *point.history[-1:]}
            for top in doomed:
                for image in (images_mod.stack_of(images, top) if top in images else []):
                    n = image.name
                    if n in keep or not follows["images"].get(n, "").startswith(prefix):
                        break
                    try:
                        images_mod.delete_image(self.store, n)
                    except ImageInUse:
                        break
                    images = self.store.load_images()
                    gone.append(n)
                    log(f"stacko: deleted image {n!r} ({follows['images'][n]})")
            if gone:
                self.record(follows.get("digest", ""), drop=tuple(gone))


def update_stackpoint(store: Store, name: str, ref_text: str, dry_run: bool = False,
                      **options: object) -> bool:
    return Update(store, name, ref_text, **options).run(dry_run)  # type: ignore[arg-type]

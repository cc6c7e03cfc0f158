"""The unpacking of an import's new layers (import-image, pull-image): each
blob streamed through its digests into a staging directory, several layers at
once, each with its content manifest.  ``oci.import_layers`` plans what to
unpack and records what was unpacked.

Layers unpack in parallel: a layer waits for those beneath it only at its end,
where directories its tar does not name take their attributes from those
beneath.  Threads, not ``concurrent.futures``: that imports logging and more,
~7 ms of every import and pull (docs/startup.md).
"""
from __future__ import annotations

import io
import os
import threading

from stacko import content, durable, moved
from stacko.errors import StackoError
from stacko.formats.compression import decompressed
from stacko.formats.layertar import HostileArchive, unpack_layer
from stacko.formats.spacebudget import NoSpace, SpaceBudget
from stacko.formats.tarfields import BadLayer
from stacko.formats.ocisource import DigestMismatch, HashingReader, LayerSpec
from stacko.quoting import quote

TYPE_CHECKING = False
if TYPE_CHECKING:   # for annotations only: imports nothing at run time
    from collections.abc import Callable

    from stacko.records import Image
    from stacko.state import Store

def unpack_all(store: Store, staging: str, below: list[Image], specs: list[LayerSpec],
               planned: list[Image], workers: int = 1, tally: moved.Tally | None = None
               ) -> dict[str, tuple[str, str | None, content.Manifest]]:
    """Unpack the new layers, up to workers at once; returns image name ->
    (staged directory, diff_id, manifest)."""
    lowers = [store.layer_path(i.layer) for i in below]        # top first
    jobs: list[tuple[LayerSpec, Image, str, list[str]]] = []
    budget = SpaceBudget(staging)       # one for all the layers of the archive
    for spec, image in zip(specs, planned):
        if image.layer:
            lowers.insert(0, store.layer_path(image.layer))
            continue
        target = os.path.join(staging, f"layer-{len(jobs)}")
        os.mkdir(target, 0o755)
        jobs.append((spec, image, target, list(lowers)))
        lowers.insert(0, target)
    if workers <= 1 or len(jobs) <= 1:
        new = {}
        try:
            for done, (spec, image, target, beneath) in enumerate(jobs, start=1):
                moved.progress(f"unpacking layer {done}/{len(jobs)} ({image.name})")
                new[image.name] = (target, *unpack_one(spec, target, beneath, budget=budget))
                if tally is not None:
                    tally.note("fetched", spec.digest, spec.size)
        finally:
            moved.progress("")       # erased, and never shown after an error message
        return new
    return unpack_parallel(jobs, workers, budget, tally)


def unpack_one(spec: LayerSpec, target: str, lowers: list[str],
               before_finish: Callable[[], None] | None = None,
               cancel: object = None, budget: SpaceBudget | None = None,
               unpacked: Callable[[], None] | None = None,
               written: Callable[[], None] | None = None
               ) -> tuple[str | None, content.Manifest]:
    """Unpack one layer; returns its diff_id and its content manifest.  cancel: a
    threading.Event that stops the unpacking at its next read when set; written:
    called once the layer's files are complete, before the layers beneath are
    waited for; unpacked: called once the layer is complete, before its
    manifest is made."""
    diff_id, known = unpack_verified(spec, target, lowers, before_finish, cancel, budget,
                                      written)
    if unpacked is not None:
        unpacked()
    # The manifest in the same pass: the data was hashed as it was written, and
    # most files' entries were read back as they were made: this lists them.
    return diff_id, content.build(target, known=known)


class Cancelled(StackoError):
    """Another layer of the same import failed: this one stops early."""


def unpack_parallel(jobs: list[tuple[LayerSpec, Image, str, list[str]]],
                    workers: int, budget: SpaceBudget | None = None,
                    tally: moved.Tally | None = None
                    ) -> dict[str, tuple[str, str | None, content.Manifest]]:
    """Unpack several layers at once, on up to workers threads.  Bottom layers
    start first, so a layer never waits for one that no thread has begun."""
    finished = [threading.Event() for _ in jobs]
    cancel = threading.Event()
    # A layer's data starts to be written back once its files are complete, while
    # the others unpack; record()'s syncfs still makes all of it durable.  An
    # error an early syncfs sees is raised here: it would not be reported twice.
    syncs: list[threading.Thread] = []
    sync_errors: list[BaseException] = []

    def sync_early(target: str) -> None:
        try:
            durable.sync_filesystem(target)
        except BaseException as e:
            sync_errors.append(e)

    def written(n: int) -> None:
        syncs.append(threading.Thread(target=sync_early, args=(jobs[n][2],), daemon=True))
        syncs[-1].start()

    results: list = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)
    lock = threading.Lock()
    begun = [0, 0]           # layers taken, layers done

    def work(n: int) -> None:
        spec, image, target, beneath = jobs[n]

        def wait_beneath() -> None:
            for event in finished[:n]:
                event.wait()
            if cancel.is_set():
                raise Cancelled("cancelled")
        try:
            # The layers above may finish as soon as this one is complete.
            results[n] = unpack_one(spec, target, beneath, wait_beneath, cancel, budget,
                                    unpacked=finished[n].set, written=lambda: written(n))
            if tally is not None:
                tally.note("fetched", spec.digest, spec.size)
            with lock:
                begun[1] += 1
                moved.progress(f"unpacked {begun[1]}/{len(jobs)} layers")
        except BaseException as e:
            errors[n] = e
            cancel.set()
        finally:
            finished[n].set()

    def worker() -> None:
        while not cancel.is_set():
            with lock:
                n = begun[0]
                if n >= len(jobs):
                    return
                begun[0] = n + 1
            work(n)

    threads = [threading.Thread(target=worker, name="stacko-unpack", daemon=True)
               for _ in range(min(workers, len(jobs)))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        cancel.set()       # Ctrl-C, SIGTERM: the workers stop at their next read
        for thread in threads:
            if thread.ident is not None:      # started
                thread.join()
        moved.progress("")
    for error in errors:
        if error is not None and not isinstance(error, Cancelled):
            raise error
    for thread in syncs:
        thread.join()
    if sync_errors:
        raise sync_errors[0]
    return {jobs[n][1].name: (jobs[n][2], *results[n]) for n in range(len(jobs))}


class CancellableReader:
    def __init__(self, inner: io.BufferedIOBase, cancel: object) -> None:
        self.inner, self.cancel = inner, cancel

    def read(self, n: int = -1) -> bytes:
        if self.cancel.is_set():  # type: ignore[attr-defined]
            raise Cancelled("cancelled")
        return self.inner.read(n)


def unpack_verified(spec: LayerSpec, target: str, lowers: list[str],
                    before_finish: Callable[[], None] | None = None,
                    cancel: object = None, budget: SpaceBudget | None = None,
                    written: Callable[[], None] | None = None
                    ) -> tuple[str | None, content.Written | None]:
    """Unpack one layer, checking its digests as it streams by; returns its diff_id
    (None for a directory, which is copied: there is no tar to have one) and what
    is known of the files written, for its manifest (None when copied)."""
    if spec.copy_into is not None:
        spec.copy_into(target)
        return None, None
    with spec.open_blob() as blob:
        raw = HashingReader(blob if cancel is None else CancellableReader(blob, cancel))
        try:
            with decompressed(raw) as plain:  # type: ignore[arg-type]
                diff = HashingReader(plain)
                known = unpack_layer(diff, target, lowers,  # type: ignore[arg-type]
                                      before_finish, budget, written)
                diff.drain()
            raw.drain()
        except (OSError, EOFError) as e:
            blame_the_blob(spec, raw)
            raise BadLayer(f"layer {quote(spec.what)} is corrupt: {e}") from None
        except (BadLayer, HostileArchive, NoSpace) as e:
            if isinstance(e, BadLayer):
                blame_the_blob(spec, raw)
            raise type(e)(f"layer {quote(spec.what)}: {e.message}", hint=e.hint) from None
    if spec.digest is not None and raw.digest != spec.digest:
        raise DigestMismatch(f"layer {quote(spec.what)} does not match its digest: expected "
                             f"{spec.digest}, found {raw.digest}", hint="the archive is corrupt")
    if spec.size is not None and raw.size != spec.size:
        raise DigestMismatch(f"layer {quote(spec.what)} has {raw.size} bytes, its descriptor says "
                             f"{spec.size}", hint="the archive is corrupt")
    if spec.diff_id is not None and diff.digest != spec.diff_id:
        raise DigestMismatch(f"layer {quote(spec.what)} does not match its diff_id: expected "
                             f"{spec.diff_id}, found {diff.digest}", hint="the archive is corrupt")
    return diff.digest, known


def blame_the_blob(spec: LayerSpec, raw: HashingReader) -> None:
    """A layer that cannot be read: when its blob is not the one its digest names
    (a corrupt download or archive), say that, rather than what broke first."""
    if spec.digest is None:
        return
    try:
        raw.drain()
    except (OSError, EOFError, StackoError):
        return
    if raw.digest != spec.digest:
        raise DigestMismatch(f"layer {quote(spec.what)} does not match its digest: expected "
                             f"{spec.digest}, found {raw.digest}",
                             hint="the archive or the download is corrupt") from None

"""The records kept in the metadata files (names and times: stacko/names.py).

Records are named tuples made by the ``record`` decorator: immutable like frozen
dataclasses, typed like NamedTuples, and ``replace`` changes fields as
dataclasses.replace does.  They are built here rather than with
collections.namedtuple, typing.NamedTuple or dataclasses, because every stacko
command loads them: importing collections, compiling each class's __new__,
and typing and dataclasses (with inspect) would cost more than a listing's
whole work (docs/startup.md has the figures).  Type checkers see them as
frozen dataclasses (dataclass_transform, below)."""
from __future__ import annotations

from stacko.errors import CorruptState

TYPE_CHECKING = False
if TYPE_CHECKING:   # for type checkers only: nothing of it runs (typing costs a start)
    from typing import TypeVar

    from typing_extensions import dataclass_transform

    T = TypeVar("T")


def replace(record: T, **changes: object) -> T:
    """A copy of record (an @record instance) with some fields changed."""
    return record._replace(**changes)  # type: ignore[attr-defined,no-any-return]


def _record(cls: type) -> type:
    """Class decorator: cls becomes an immutable record as with typing.NamedTuple.

    The fields are cls's annotated names, in order; a value given to one in the
    class body is its default (defaults come last, as for a NamedTuple).  The
    methods stay.  Records are tuples, so they compare by value; they have
    ``_fields``, ``_field_defaults``, ``_replace`` and ``_asdict`` as named
    tuples do."""
    name = cls.__name__
    names = tuple(cls.__dict__.get("__annotations__", {}))
    defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
    if any(n not in defaults for n in names[len(names) - len(defaults):]):
        raise TypeError(f"{name}: a field without a default follows one with a default")
    count = len(names)

    def __new__(klass: type, *args: object, **kwargs: object) -> tuple:
        if len(args) == count and not kwargs:          # the common case, fast
            return tuple.__new__(klass, args)
        if len(args) > count:
            raise TypeError(f"{name}() takes {count} arguments but {len(args)} were given")
        for n in names[:len(args)]:
            if n in kwargs:
                raise TypeError(f"{name}() got multiple values for argument {n!r}")
        values = list(args)
        for n in names[len(args):]:
            if n in kwargs:
                values.append(kwargs.pop(n))
            elif n in defaults:
                values.append(defaults[n])
            else:
                raise TypeError(f"{name}() missing required argument {n!r}")
        if kwargs:
            raise TypeError(f"{name}() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return tuple.__new__(klass, values)

    def _replace(self: tuple, **changes: object) -> tuple:
        values = [changes.pop(n, v) for n, v in zip(names, self)]
        if changes:
            raise ValueError(f"Got unexpected field names: {list(changes)!r}")
        return tuple.__new__(type(self), values)

    def __repr__(self: tuple) -> str:
        return f"{name}({', '.join(f'{n}={v!r}' for n, v in zip(names, self))})"

    body = {k: v for k, v in cls.__dict__.items()
            if k not in names and k not in ("__dict__", "__weakref__")}
    body.update(__slots__=(), __new__=__new__, _replace=_replace, __repr__=__repr__,
                _fields=names, _field_defaults=defaults,
                _asdict=lambda self: dict(zip(names, self)),
                __getnewargs__=lambda self: tuple(self))
    for index, n in enumerate(names):
        body[n] = property(lambda self, index=index: self[index],  # type: ignore[misc]
                           doc=f"field {index}: {n}")
    return type(name, (tuple,), body)


if TYPE_CHECKING:
    # What type checkers see: a record class is a frozen dataclass (its
    # fields, defaults and __init__ from its annotations), as PEP 681 lets a
    # decorator say.  At run time it is the named tuple _record makes.
    @dataclass_transform(frozen_default=True)
    def record(cls: type[T]) -> type[T]: ...
else:
    record = _record


def _get(data: dict[str, object], key: str, kind: type[T], source: str) -> T:
    value = data.get(key)
    if not isinstance(value, kind):
        raise CorruptState(f"{source}: field {key!r} is missing or not a {kind.__name__}")
    return value


def _text(data: dict[str, object], key: str) -> str:
    """A free-text field: what is not a string is read as ""."""
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _opt(data: dict[str, object], key: str, kind: type[T], source: str) -> T | None:
    """_get of a field that may be missing or null."""
    return None if data.get(key) is None else _get(data, key, kind, source)


@record
class Image:
    name: str
    layer: str
    parent: str | None = None
    created: str = ""
    diff_id: str | None = None   # sha256 of the layer's tar, for images that were imported
    # The digest of the content manifest recorded when the image was sealed
    # (content.py), and its layer's size in bytes (hard links once); None for
    # an image open for editing, or made before stacko recorded manifests.
    manifest: str | None = None
    size: int | None = None
    # Every digest under which this layer was seen or produced: diff_ids and
    # compressed blob digests of archives and registries it came from, and of
    # what export-image and push-image wrote.  An import or pull reuses the
    # image for a layer with any of them, so only missing layers travel.
    digests: tuple[str, ...] = ()
    # The OCI config's run settings (Env, Cmd, Entrypoint, WorkingDir, User,
    # Labels, ExposedPorts, Volumes, StopSignal) and the manifest's annotations,
    # {"config": {...}, "annotations": {...}}; export and push write them back.
    settings: dict[str, object] | None = None
    repos: tuple[str, ...] = ()     # HOST/REPO it was pulled from or pushed to
    # pull-image under a trust policy: the reference, the manifest and the
    # signatures accepted (stacko/signing/pullsign.py), for verify-image --policy.
    signed: dict[str, object] | None = None
    # The compressed blobs this layer is known as, (media type, digest, size,
    # diff_id): the registry's, for a pulled layer, and what export-image and
    # push-image packed.  push-image asks the registry for these before it packs
    # anything, and packs a layer only to upload it.  Cleared, as digests, when
    # the image is edited.
    blobs: tuple[tuple[str, str, int, str], ...] = ()

    def known_digests(self) -> tuple[str, ...]:
        return ((self.diff_id,) if self.diff_id and self.diff_id not in self.digests
                else ()) + self.digests

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"name": self.name, "layer": self.layer, "parent": self.parent,
                "created": self.created}
        if self.diff_id is not None:
            data["diff_id"] = self.diff_id
        if self.manifest is not None:
            data["manifest"] = self.manifest
        if self.size is not None:
            data["size"] = self.size
        if self.digests:        # absent, not empty, as in files written before them
            data["digests"] = list(self.digests)
        if self.settings:
            data["settings"] = self.settings
        if self.repos:
            data["repos"] = list(self.repos)
        if self.signed:
            data["signed"] = self.signed
        if self.blobs:
            data["blobs"] = [{"mediaType": m, "digest": d, "size": n, "diff_id": i}
                             for m, d, n, i in self.blobs]
        return data

    @classmethod
    def from_dict(cls, data: object, source: str) -> "Image":
        if not isinstance(data, dict):
            raise CorruptState(f"{source}: an image record is not an object")
        digests = _opt(data, "digests", list, source) or []
        repos = _opt(data, "repos", list, source) or []
        if not all(isinstance(x, str) for x in digests + repos):
            raise CorruptState(f"{source}: field 'digests' or 'repos' holds a non-string")
        # Positional, in the order of the fields: a listing makes 1,000 of these.
        return cls(_get(data, "name", str, source), _get(data, "layer", str, source),
                   _opt(data, "parent", str, source),
                   data.get("created") or "",
                   _opt(data, "diff_id", str, source),
                   _opt(data, "manifest", str, source),
                   _opt(data, "size", int, source),
                   tuple(digests),
                   _opt(data, "settings", dict, source),
                   tuple(repos),
                   _opt(data, "signed", dict, source),
                   _blobs(data, source) if "blobs" in data else ())


def _blobs(data: dict, source: str) -> tuple[tuple[str, str, int, str], ...]:
    found = []
    for b in _get(data, "blobs", list, source):
        if not isinstance(b, dict) or not all(isinstance(b.get(k), str) for k in
                                              ("mediaType", "digest", "diff_id")) \
                or not isinstance(b.get("size"), int) or isinstance(b.get("size"), bool):
            raise CorruptState(f"{source}: field 'blobs' holds an entry that is not "
                               "{mediaType, digest, size, diff_id}")
        found.append((b["mediaType"], b["digest"], b["size"], b["diff_id"]))
    return tuple(found)


@record
class Instance:
    image: str
    layer: str
    created: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"image": self.image, "layer": self.layer, "created": self.created}

    @classmethod
    def from_dict(cls, data: object, source: str) -> "Instance":
        if not isinstance(data, dict):
            raise CorruptState(f"{source}: an instance record is not an object")
        return cls(image=_get(data, "image", str, source), layer=_get(data, "layer", str, source),
                   created=data.get("created") or "")


@record
class DetachedMount:
    """An earlier mount of an instance, detached from the stackpoint's directory
    by a gapless switch while processes may still hold files in it.  Until they
    let go it still writes the instance's upper layer, so the instance must not
    be mounted again.  A device number means something only within one boot."""

    image: str
    device: int          # st_dev of the overlay's files
    boot_id: str

    def to_dict(self) -> dict[str, object]:
        return {"image": self.image, "device": self.device, "boot_id": self.boot_id}

    @classmethod
    def from_dict(cls, data: object, source: str) -> "DetachedMount":
        if not isinstance(data, dict):
            raise CorruptState(f"{source}: a detached-mount record is not an object")
        return cls(image=_get(data, "image", str, source), device=_get(data, "device", int, source),
                   boot_id=_get(data, "boot_id", str, source))


def _get_int(data: dict[str, object], key: str, source: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CorruptState(f"{source}: field {key!r} is missing or not a whole number")
    return value


@record
class Event:
    """One switch of a stackpoint, kept so that an admin can tell what happened
    and why (a rollback above all).  time: RFC 3339 UTC with Z."""

    time: str
    action: str              # cutover, fallback, set, check-failed, boot-fallback, confirm …
    from_: str | None     # the image that was current before ("from" on disk)
    to: str | None        # the image that is current after
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"time": self.time, "action": self.action, "from": self.from_, "to": self.to,
                "reason": self.reason}

    @classmethod
    def from_dict(cls, data: object, source: str) -> "Event":
        if not isinstance(data, dict):
            raise CorruptState(f"{source}: an event record is not an object")
        return cls(time=_get(data, "time", str, source), action=_get(data, "action", str, source),
                   from_=_opt(data, "from", str, source),
                   to=_opt(data, "to", str, source),
                   reason=_text(data, "reason"))


@record
class Tentative:
    """A cutover (--tries N) that lasts N mounts of the unmounted stackpoint
    (N boots) unless confirm-stackpoint makes it permanent."""

    image: str               # the image the tentative cutover went to
    tries_left: int
    tries: int               # N, as given

    def to_dict(self) -> dict[str, object]:
        return {"image": self.image, "tries_left": self.tries_left, "tries": self.tries}

    @classmethod
    def from_dict(cls, data: object, source: str) -> "Tentative":
        if not isinstance(data, dict):
            raise CorruptState(f"{source}: a tentative record is not an object")
        return cls(image=_get(data, "image", str, source),
                   tries_left=_get_int(data, "tries_left", source),
                   tries=_get_int(data, "tries", source))


@record
class PendingCheck:
    """A checked cutover whose check is running (or was killed while running):
    recorded with the switch, before the check starts, so that the next
    mount-stackpoint or check --repair can undo a cutover whose command died.
    The process is named by pid, start time and boot, which pid reuse cannot fake."""

    previous: str            # the image that was current before: what an undo goes back to
    image: str               # the image under check
    command: str
    pid: int
    start: int               # the process's start time (clock ticks since boot)
    boot_id: str
    started: str             # RFC 3339 UTC
    token: str = ""          # STACKO_CHECK_ID in the check's environment
    history: tuple[str, ...] | None = None   # the history before: what an undo restores

    def to_dict(self) -> dict[str, object]:
        data = {"previous": self.previous, "image": self.image, "command": self.command,
                "pid": self.pid, "start": self.start, "boot_id": self.boot_id,
                "started": self.started, "token": self.token}
        if self.history is not None:      # absent in records written before it was kept
            data["history"] = list(self.history)
        return data

    @classmethod
    def from_dict(cls, data: object, source: str) -> "PendingCheck":
        if not isinstance(data, dict):
            raise CorruptState(f"{source}: a pending-check record is not an object")
        return cls(previous=_get(data, "previous", str, source),
                   image=_get(data, "image", str, source),
                   command=_get(data, "command", str, source),
                   pid=_get_int(data, "pid", source), start=_get_int(data, "start", source),
                   boot_id=_get(data, "boot_id", str, source),
                   started=_get(data, "started", str, source),
                   token=_text(data, "token"),
                   history=_history(data.get("history"), source))


def _history(data: object, source: str) -> tuple[str, ...] | None:
    if data is None:
        return None
    if not isinstance(data, list) or not all(isinstance(h, str) for h in data):
        raise CorruptState(f"{source}: the history of a pending-check record is not a "
                           "list of strings")
    return tuple(data)


@record
class Stackpoint:
    name: str
    current: str
    path: str | None = None          # None: <root>/stackpoints/<name>
    history: tuple[str, ...] = ()       # earlier current images, oldest first
    instances: tuple[Instance, ...] = ()
    detached: tuple[DetachedMount, ...] = ()   # earlier mounts that may still be held
    tentative: Tentative | None = None      # a cutover --tries N not yet confirmed
    events: tuple[Event, ...] = ()             # the last switches, oldest first
    checking: PendingCheck | None = None    # a cutover --check whose check runs
    nodev: bool = False       # mount without device nodes (new-stackpoint --nodev)
    nosuid: bool = False      # mount without setuid and setgid (new-stackpoint --nosuid)
    # update-stackpoint: the REF followed, the last check, the images it pulled
    # (a plain object, checked by update.py, which alone reads and writes it).
    follows: dict | None = None

    def mount_attrs(self) -> tuple[str, ...]:
        """The mount flags this stackpoint's overlay gets besides the defaults."""
        return tuple(a for a, on in (("nodev", self.nodev), ("nosuid", self.nosuid)) if on)

    def instance(self, image: str) -> Instance | None:
        for inst in self.instances:
            if inst.image == image:
                return inst
        return None

    def current_instance(self) -> Instance:
        inst = self.instance(self.current)
        assert inst is not None, f"stackpoint {self.name} has no current instance"
        return inst

    def with_instance(self, inst: Instance) -> "Stackpoint":
        others = tuple(i for i in self.instances if i.image != inst.image)
        return replace(self, instances=others + (inst,))

    def without_instance(self, image: str) -> "Stackpoint":
        return replace(self, instances=tuple(i for i in self.instances if i.image != image),
                       history=tuple(h for h in self.history if h != image),
                       detached=tuple(d for d in self.detached if d.image != image))

    def switched_to(self, image: str) -> "Stackpoint":
        """Make image current; the present current goes on top of the history."""
        if image == self.current:
            return self
        history = tuple(h for h in self.history if h not in (image, self.current))
        return replace(self, current=image, history=history + (self.current,))

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"name": self.name, "current": self.current, "path": self.path,
                "history": list(self.history),
                "instances": [i.to_dict() for i in self.instances]}
        if self.detached:      # absent, not empty, in files written before there were any
            data["detached"] = [d.to_dict() for d in self.detached]
        if self.tentative is not None:
            data["tentative"] = self.tentative.to_dict()
        if self.events:
            data["events"] = [e.to_dict() for e in self.events]
        if self.checking is not None:
            data["checking"] = self.checking.to_dict()
        for attr in self.mount_attrs():      # absent when off, as in files written before
            data[attr] = True
        if self.follows is not None:
            data["follows"] = self.follows
        return data

    @classmethod
    def from_dict(cls, data: object, source: str) -> "Stackpoint":
        if not isinstance(data, dict):
            raise CorruptState(f"{source}: a stackpoint record is not an object")
        history = _get(data, "history", list, source)
        instances = _get(data, "instances", list, source)
        if not all(isinstance(h, str) for h in history):
            raise CorruptState(f"{source}: field 'history' holds a non-string")
        point = cls(name=_get(data, "name", str, source), current=_get(data, "current", str, source),
                    path=_opt(data, "path", str, source), history=tuple(history),
                    instances=tuple(Instance.from_dict(i, source) for i in instances),
                    detached=tuple(DetachedMount.from_dict(d, source)
                                   for d in _opt(data, "detached", list, source) or ()),
                    tentative=(Tentative.from_dict(data["tentative"], source)
                               if data.get("tentative") is not None else None),
                    events=tuple(Event.from_dict(e, source)
                                 for e in _opt(data, "events", list, source) or ()),
                    checking=(PendingCheck.from_dict(data["checking"], source)
                              if data.get("checking") is not None else None),
                    nodev=_opt(data, "nodev", bool, source) or False,
                    nosuid=_opt(data, "nosuid", bool, source) or False,
                    follows=_opt(data, "follows", dict, source))
        if point.instance(point.current) is None:
            raise CorruptState(f"{source}: stackpoint {point.name!r} has no instance "
                               f"of its current image {point.current!r}")
        return point

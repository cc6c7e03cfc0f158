"""The kernel's mount table, as ``/proc/self/mountinfo`` shows it (never
mount(8)'s text): who is mounted where, and which of stacko's layers each
overlay uses.  Reading it needs no privilege and no mount call, so everything
that only looks (listings, cgroups, the guards before a removal) imports this
and not overlay.py.

Kernel facts this module relies on:

* mountinfo writes space, tab, newline and backslash inside a field as
  ``\\ooo`` octal escapes, and so commas inside an option's value.
* overlayfs shows upperdir in mountinfo as it was given: absolute from the new
  API, absolute or relative to the layers directory from mount(2).
* A mount put beneath another (MOVE_MOUNT_BENEATH) is listed after it but is
  its parent.
"""
from __future__ import annotations

import os

from stacko.records import record

LAYER_KEYS = ("lowerdir", "lowerdir+", "datadir+", "upperdir", "workdir")


@record
class Mount:
    mount_id: int
    parent_id: int
    device: str              # "major:minor"
    root: str
    mount_point: str
    mount_options: str
    fstype: str
    source: str
    super_options: str

    def option(self, key: str) -> str | None:
        """One value of the super options (overlay's upperdir=, lowerdir= …)."""
        # The kernel writes each value with ',', ' ', tab, newline and '\\' as
        # octal escapes, so splitting on ',' comes first and decoding after; what
        # is left are the backslash escapes of the string as it was given.
        for item in self.super_options.split(","):
            name, _, value = item.partition("=")
            if name == key:
                return unescape_option(decode_mountinfo_field(value))
        return None

    @property
    def read_only(self) -> bool:
        return "ro" in self.mount_options.split(",")


def decode_mountinfo_field(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo.

    Without `re` (re.sub(r"\\([0-7]{3})", ...) in effect), which would cost every
    command that reads the mount table: see names.is_name."""
    if "\\" not in field:
        return field
    parts = field.split("\\")
    decoded = [parts[0]]
    for part in parts[1:]:
        if len(part) >= 3 and not part[:3].strip("01234567"):
            decoded.append(chr(int(part[:3], 8)) + part[3:])
        else:
            decoded.append("\\" + part)
    return "".join(decoded)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            # Positional: a record's keyword path costs 4 times more, and a
            # host may have hundreds of mounts (see records.record).
            mounts.append(Mount(
                int(fields[0]), int(fields[1]), fields[2],       # mount_id, parent_id, device
                decode_mountinfo_field(fields[3]),               # root
                decode_mountinfo_field(fields[4]),               # mount_point
                fields[5], fields[sep + 1],                      # mount_options, fstype
                decode_mountinfo_field(fields[sep + 2]),         # source
                " ".join(fields[sep + 3:])))                     # super_options
        except (ValueError, IndexError):
            continue     # a line we do not understand is no mount of ours
    return mounts


def mounts() -> list[Mount]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def find_mount(path: str, table: list[Mount] | None = None) -> Mount | None:
    """The mount on top at path (the one that shows there), if any."""
    stacked = stacked_at(path, table)
    return stacked[-1] if stacked else None


def stacked_at(path: str, table: list[Mount] | None = None) -> list[Mount]:
    """The mounts at path, bottom first.  A mount put beneath another
    (MOVE_MOUNT_BENEATH) is listed after it but is its parent, so the order
    comes from the parent ids, not from the order of the table."""
    here = [m for m in (table if table is not None else mounts()) if m.mount_point == path]
    ids = {m.mount_id for m in here}
    todo = [m for m in here if m.parent_id not in ids]
    ordered: list[Mount] = []
    while todo:
        m = todo.pop()
        ordered.append(m)
        todo += [n for n in here if n.parent_id == m.mount_id and n not in ordered]
    return ordered + [m for m in here if m not in ordered]      # a loop: never


def layers_of(m: Mount, layers_dir: str, work_dir: str) -> set[str]:
    """The layer ids (names in layers_dir or work_dir) an overlay mount uses."""
    if m.fstype != "overlay":
        return set()
    found = set()
    # The values are split on ',' (escaped by the kernel as \054 inside a value),
    # then the ':' between legacy lowerdirs, which stacko's own paths never hold.
    # mount(8) leaves them relative to layers_dir, the new API absolute.
    for item in m.super_options.split(","):
        key, _, value = item.partition("=")
        if key not in LAYER_KEYS:
            continue
        value = decode_mountinfo_field(value)
        for part in value.split(":") if key == "lowerdir" else [value]:
            path = os.path.normpath(os.path.join(layers_dir, unescape_option(part)))
            if os.path.dirname(path) in (layers_dir, work_dir):
                found.add(os.path.basename(path))
    return found


def layer_users(layer: str, layers_dir: str, work_dir: str,
                table: list[Mount] | None = None) -> list[Mount]:
    """Every overlay mount, wherever it is mounted, that uses layer: the mount
    table is the truth, whatever the records or a moved directory say."""
    return [m for m in (table if table is not None else mounts())
            if layer in layers_of(m, layers_dir, work_dir)]


def mounts_under(path: str, table: list[Mount] | None = None) -> list[Mount]:
    prefix = path.rstrip("/") + "/"
    return [m for m in (table if table is not None else mounts())
            if m.mount_point == path or m.mount_point.startswith(prefix)]



def unescape_option(value: str) -> str:
    """Undo escape_option: a backslash takes the next character (but a
    newline) as it is, as re.sub(r"\\(.)", r"\1", value) would."""
    if "\\" not in value:
        return value
    chars, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value) and value[i + 1] != "\n":
            i += 1
        chars.append(value[i])
        i += 1
    return "".join(chars)

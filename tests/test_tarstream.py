"""stacko.formats.tarstream, the lean tar reader of the unpacker (issue 21):
what real writers make is read as tarfile reads it, and hostile headers are
refused with a BadLayer, never a traceback, a loop or a huge read."""
from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path
from typing import List, Optional

import pytest

from stacko.formats.tarfields import BadLayer
from stacko.formats.tarstream import EXT_LIMIT, MAX_EXT, Member, TarReader


class Counting:
    def __init__(self, data: bytes) -> None:
        self.inner, self.count = io.BytesIO(data), 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.count += len(data)
        return data


def read_all(data: bytes) -> List[tuple]:
    """Every member as a tuple, with its data (or its runs' data, when sparse)."""
    reader = TarReader(io.BytesIO(data))
    found = []
    while True:
        m = reader.next()
        if m is None:
            return found
        found.append((m, _data(reader, m)))


def _data(reader: TarReader, m: Member) -> bytes:
    r, w = os.pipe()
    try:
        if m.sparse is None:
            size = m.size
            reader.copy(size, w)
        else:
            size = sum(n for _, n in m.sparse)
            for _, n in m.sparse:
                reader.copy(n, w)
        os.close(w)
        w = -1
        return os.read(r, size + 1) if size else b""
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def header(name: str = "f", size: int = 0, kind: bytes = tarfile.REGTYPE,
           fmt: int = tarfile.USTAR_FORMAT, **fields: object) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info.tobuf(format=fmt)


def with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def rec(key: bytes, value: bytes) -> bytes:
    """One PAX record, its length counting itself."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def pax(records: bytes, name: str = "f", size: int = 1, body: bytes = b"x") -> bytes:
    """A PAX header of records (written as given), then a regular member."""
    xhd = header("./PaxHeaders/f", len(records), tarfile.XHDTYPE)
    return xhd + pad(records) + header(name, size) + pad(body) + bytes(1024)


# --- what real writers make ---------------------------------------------------------
@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tarfile_archives_read_as_tarfile_reads_them(fmt: int) -> None:
    out = io.BytesIO()
    long = "d" * 60 + "/" + "e" * 60 + "/file"          # a ustar prefix, or a long name
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, kind, data, extra in [
                ("d", tarfile.DIRTYPE, b"", {}),
                (long, tarfile.REGTYPE, b"hello" * 300, {"uid": 1000, "gid": 100}),
                ("d/link", tarfile.SYMTYPE, b"", {"linkname": "../" + "t" * 120
                                                    if fmt != tarfile.USTAR_FORMAT else "x"}),
                ("d/hard", tarfile.LNKTYPE, b"", {"linkname": long
                                                  if fmt != tarfile.USTAR_FORMAT else "x"}),
                ("null", tarfile.CHRTYPE, b"", {"devmajor": 1, "devminor": 3}),
                ("fifo", tarfile.FIFOTYPE, b"", {}),
                ("empty", tarfile.REGTYPE, b"", {"mode": 0o4755})]:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mtime = kind, len(data), 1_600_000_000
            for key, value in extra.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if data else None)
    data = out.getvalue()
    mine = read_all(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        theirs = [(i, tar.extractfile(i).read() if i.isreg() else b"")  # type: ignore[union-attr]
                  for i in tar]
    assert len(mine) == len(theirs)
    for (m, m_data), (t, t_data) in zip(mine, theirs):
        assert (m.name.rstrip("/"), m.linkname, m.mode, m.uid, m.gid, m.mtime_ns // 10**9, m_data) == \
            (t.name, t.linkname, t.mode, t.uid, t.gid, t.mtime, t_data)
        assert m.type == t.type.replace(b"\0", b"0")
        if t.ischr():
            assert (m.devmajor, m.devminor) == (1, 3)


def test_pax_fields_xattrs_and_times() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.size = 3
        info.pax_headers = {"mtime": "1600000000.123456789", "uid": str(2 ** 31),
                            "SCHILY.xattr.user.k": "v\u00e9", "path": "p\u00e9/q" * 40}
        tar.addfile(info, io.BytesIO(b"abc"))
    (m, body), = read_all(out.getvalue())
    assert m.name == "p\u00e9/q" * 40 and body == b"abc" and m.uid == 2 ** 31
    assert m.mtime_ns == 1_600_000_000_123_456_789
    assert m.xattrs == {"user.k": "v\u00e9".encode()}


def test_global_pax_headers_apply_to_the_members_after_them() -> None:
    records = rec(b"uid", b"4242424")
    ghd = header("g", len(records), tarfile.XGLTYPE)
    data = ghd + pad(records) + header("a") + header("b") + bytes(1024)
    assert [m.uid for m, _ in read_all(data)] == [4242424, 4242424]


def test_base256_numbers() -> None:
    data = header("f", 0, fmt=tarfile.GNU_FORMAT, uid=2 ** 30, mtime=2 ** 40) + bytes(1024)
    (m, _), = read_all(data)
    assert m.uid == 2 ** 30 and m.mtime_ns == 2 ** 40 * 10**9


@pytest.mark.parametrize("options", [["--format=gnu"], ["--format=pax"],
                                     ["--format=pax", "--sparse-version=0.1"],
                                     ["--format=pax", "--sparse-version=0.0"]])
def test_sparse_files_of_gnu_tar(tmp_path: Path, options: List[str]) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        for offset in (0, 1 << 20, (8 << 20) - 4096):
            f.seek(offset)
            f.write(bytes([offset % 251 + 1]) * 4096)
    data = subprocess.run(["tar", *options, "--sparse", "-c", "-C", str(tmp_path), "big"],
                          check=True, capture_output=True).stdout
    (m, body), = read_all(data)
    assert m.name == "big" and m.realsize == 8 << 20
    runs = [(o, n) for o, n in m.sparse or [] if n]
    assert runs == [(0, 4096), (1 << 20, 4096), ((8 << 20) - 4096, 4096)]
    assert body == b"".join(bytes([o % 251 + 1]) * 4096 for o, _ in runs)


def test_the_whole_stream_is_read() -> None:
    data = header("a", 3) + pad(b"abc") + bytes(10240)
    stream = Counting(data)
    reader = TarReader(stream)
    assert reader.next() is not None and reader.next() is None
    assert stream.count == len(data)


# --- hostile headers ------------------------------------------------------------------
def refused(data: bytes, match: Optional[str] = None) -> str:
    with pytest.raises(BadLayer) as e:
        read_all(data)
    if match is not None:
        assert match in e.value.message, e.value.message
    return e.value.message


def test_empty_and_truncated_headers() -> None:
    refused(b"", "empty")
    one = header("a", 3) + pad(b"abc")
    refused(one + header("b")[:300], "truncated")
    assert len(read_all(one + bytes(300))) == 1        # zeros where a header would be: the end


def test_bad_checksums() -> None:
    bad = bytearray(header("a"))
    bad[0:1] = b"b"                                     # the name changed, not the checksum
    refused(bytes(bad) + bytes(1024), "not a valid tar archive")
    refused(header("ok") + bytes(bad) + bytes(1024), "corrupt header")


def test_malformed_numbers() -> None:
    for field in (slice(124, 136), slice(108, 116)):
        block = bytearray(header("a"))
        block[field] = b"12x4".ljust(field.stop - field.start, b"\0")
        refused(with_checksum(block) + bytes(1024), "malformed")
        block[field] = b"9".ljust(field.stop - field.start, b"\0")
        refused(with_checksum(block) + bytes(1024), "malformed")


def test_sizes_beyond_the_archive() -> None:
    refused(header("a", 1 << 20) + pad(b"abc"), "ends early")
    refused(pax(rec(b"size", b"99999999999")), "ends early")


def test_huge_pax_headers_are_not_read() -> None:
    huge = header("./PaxHeaders/f", 8 << 30, tarfile.XHDTYPE, fmt=tarfile.GNU_FORMAT)
    stream = Counting(huge + b"30 path=" + b"a" * 100 + b"\n")
    with pytest.raises(BadLayer, match="PAX header of"):
        TarReader(stream).next()
    refused(header("L", EXT_LIMIT + 1, tarfile.GNUTYPE_LONGNAME, fmt=tarfile.GNU_FORMAT),
            "long name")


@pytest.mark.parametrize("records", [
    b"999 path=a\n",          # longer than the header
    b"9 path=abc\n",          # shorter than the record
    b"11 path=abc\0",         # no newline at its end
    b"x1 path=abc\n",         # not a length
    b"12 pathabc\n",          # no '='
    b"10 =abcde\n",           # no key
])
def test_malformed_pax_records(records: bytes) -> None:
    refused(pax(records), "PAX header")


@pytest.mark.parametrize("records", [rec(b"path", b"a\0/../b"), rec(b"linkpath", b"a\0b")])
def test_nul_in_pax_names(records: bytes) -> None:
    refused(pax(records), "NUL")


@pytest.mark.parametrize("record", [rec(b"uid", b"-1"), rec(b"uid", b"99999999999999"),
                                    rec(b"mtime", b"1x5"), rec(b"size", b"-5"),
                                    rec(b"gid", b"1e3")])
def test_impossible_pax_numbers(record: bytes) -> None:
    refused(pax(record))


def test_a_loop_of_long_names_is_bounded() -> None:
    name = pad(b"n" * 200 + b"\0")
    longs = (header("././@LongLink", 201, tarfile.GNUTYPE_LONGNAME, fmt=tarfile.GNU_FORMAT)
             + name) * 10_000
    refused(longs + header("a") + bytes(1024), f"more than {MAX_EXT}")
    ok = (header("././@LongLink", 201, tarfile.GNUTYPE_LONGNAME, fmt=tarfile.GNU_FORMAT) + name)
    (m, _), = read_all(ok + header("a") + bytes(1024))
    assert m.name == "n" * 200


def test_an_extended_header_without_its_member() -> None:
    records = rec(b"path", b"ab")
    refused(header("x", len(records), tarfile.XHDTYPE) + pad(records) + bytes(1024),
            "truncated")


def test_data_of_a_member_cannot_be_read_past_its_size() -> None:
    reader = TarReader(io.BytesIO(header("a", 3) + pad(b"abc") + header("b", 5) + pad(b"defgh")
                                  + bytes(1024)))
    m = reader.next()
    assert m is not None
    r, w = os.pipe()
    try:
        with pytest.raises(BadLayer, match="past its size"):
            reader.copy(4, w)
    finally:
        os.close(r)
        os.close(w)


def test_unsupported_types_are_refused() -> None:
    refused(header("v", 0, b"V", fmt=tarfile.GNU_FORMAT) + bytes(1024), "unsupported type")


def test_sparse_maps_beyond_the_file_are_refused() -> None:
    runs = rec(b"GNU.sparse.map", b"0,5,10,5")
    refused(pax(runs + rec(b"GNU.sparse.realsize", b"12"), size=10, body=b"x" * 10),
            "sparse map beyond")
    refused(pax(runs + rec(b"GNU.sparse.realsize", b"100"), size=3, body=b"x" * 3),
            "sparse map larger")


# --- the unpacker's writer threads (filewriters.py) -------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="unpacking sets owners: root only")
def test_paths_taken_beforehand_are_replaced_not_followed(tmp_path: Path) -> None:
    """A writer thread that finds its path taken (here by what was in the
    directory before; in an import, by nothing) hands the file back, and the
    unpacker makes room and writes it: never through a symlink."""
    from stacko.formats.layertar import unpack_layer
    outside = tmp_path / "outside"
    outside.write_text("keep")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(str(outside), root / "evil")
    (root / "plain").write_text("old")
    (root / "dir").mkdir()
    (root / "dir" / "inner").write_text("old")
    # Taken paths among the first files (which the unpacking thread writes) and
    # among the later ones (handed to the writer threads, in several batches).
    taken = [("evil", b"mine"), ("plain", b"new"), ("dir", b"file now")]
    members = taken + [(f"f{n}", b"%d" % n) for n in range(100)] + [
        (f"late-{name}", body) for name, body in taken]
    os.symlink(str(outside), root / "late-evil")
    (root / "late-plain").write_text("old")
    (root / "late-dir").mkdir()
    data = b"".join(header(name, len(body), mode=0o640) + pad(body) for name, body in members)
    known = unpack_layer(io.BytesIO(data + bytes(1024)), str(root))
    assert outside.read_text() == "keep"
    for name, body in members:
        path = root / name
        assert not path.is_symlink() and path.read_bytes() == body, name
        assert path.stat().st_mode & 0o7777 == 0o640
    assert len(known.hashes) == len(members)


@pytest.mark.skipif(os.geteuid() != 0, reason="unpacking sets owners: root only")
def test_written_is_called_once_every_file_is_there_before_the_layers_beneath(
        tmp_path: Path) -> None:
    """An import starts a layer's write-back (written) as soon as its files are
    complete, not after it has waited for the layers beneath (before_finish)."""
    from stacko.formats.layertar import unpack_layer
    root = tmp_path / "root"
    root.mkdir()
    members = [(f"f{n}", b"%d" % n) for n in range(200)]    # writer threads too
    data = b"".join(header(name, len(body)) + pad(body) for name, body in members)
    events: List[tuple] = []
    unpack_layer(io.BytesIO(data + bytes(1024)), str(root),
                 before_finish=lambda: events.append(("beneath", None)),
                 written=lambda: events.append(("written", sorted(os.listdir(root)))))
    assert events == [("written", sorted(name for name, _ in members)), ("beneath", None)]


@pytest.mark.skipif(os.geteuid() != 0, reason="unpacking sets owners: root only")
def test_the_manifest_of_an_unpacked_layer_is_what_a_walk_finds(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """The entries the writers read back from their descriptors (content.Written)
    are what a walk of the layer finds, whatever came after them: a path named
    again, a hard link, a directory replaced by a file; and the walk does not
    look at those files again."""
    from stacko import content
    from stacko.formats.layertar import unpack_layer
    out = io.BytesIO()

    def add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields: object) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 1_600_000_000, 0o644
        for key, value in fields.items():
            setattr(info, key, value)
        tar.addfile(info, io.BytesIO(data) if data else None)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "d", type=tarfile.DIRTYPE, mode=0o755)
        add(tar, "d/inner", b"in a directory replaced later")
        for n in range(150):         # past the first 64: the writer threads' too
            add(tar, f"f{n:03d}", b"%d" % n * (n + 1), uid=n, gid=2 * n, mode=0o600 + n % 64,
                pax_headers={"SCHILY.xattr.user.note": f"note {n}"} if n % 7 == 0 else {})
        add(tar, "f120", b"named again")                       # replaces a writer's file
        add(tar, "hard", type=tarfile.LNKTYPE, linkname="f130")
        add(tar, "d", b"a file now")                          # the directory removed
        add(tar, "big", os.urandom(3 << 20))                   # written by the unpacker
        add(tar, "sym", type=tarfile.SYMTYPE, linkname="f001")
        for n in range(150, 200):
            add(tar, f"f{n:03d}", b"late %d" % n)
    root = tmp_path / "root"
    root.mkdir()
    known = unpack_layer(io.BytesIO(out.getvalue()), str(root))
    looked: list = []
    real_lstat = os.lstat
    monkeypatch.setattr(content.os, "lstat", lambda p: looked.append(p) or real_lstat(p))
    built = content.build(str(root), known=known)
    monkeypatch.undo()
    walked = content.build(str(root))
    assert built.entries == walked.entries
    assert walked.entries["/f130"]["links"] == 2 and walked.entries["/f120"]["size"] == 11
    assert walked.entries["/f007"]["xattrs"] == {"user.note": b"note 7".hex()}
    assert walked.entries["/d"]["type"] == "file"
    names = {os.path.basename(p) for p in looked}
    assert {"f130", "hard", "sym"} <= names          # a hard link's, a symlink: looked at
    assert not names & {"f000", "f007", "f100", "f120", "f199", "big", "d"}   # only listed


@pytest.mark.skipif(os.geteuid() != 0, reason="unpacking sets owners: root only")
def test_a_file_made_as_it_should_be_is_not_chowned_nor_chmodded(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A file is created with its mode (but setuid, setgid, sticky), and its
    owner and mode are set only where the file as created differs: as root, a
    plain 0:0 file needs neither call.  What ends on disk is what the tar says,
    and what the manifest says."""
    from stacko import content
    from stacko.formats import filewriters
    from stacko.formats.layertar import unpack_layer
    me = (os.geteuid(), os.getegid())
    members = [("plain", me, 0o644), ("other", (1000, 100), 0o640), ("setuid", me, 0o4755),
               ("umasked", me, 0o666), ("setgid-other", (7, 8), 0o2750)]
    members += [(f"f{n}", me, 0o600 + n % 2 * 0o44) for n in range(100)]   # the writers' too
    data = b"".join(header(name, 3, uid=uid, gid=gid, mode=mode) + pad(b"abc")
                    for name, (uid, gid), mode in members)
    calls: List[str] = []
    for name in ("chown", "chmod"):
        real = getattr(os, name)
        monkeypatch.setattr(filewriters.os, name,
                            lambda fd, *a, _real=real, _name=name: calls.append(_name) or
                            _real(fd, *a))
    old = os.umask(0o022)
    try:
        root = tmp_path / "root"
        root.mkdir()
        known = unpack_layer(io.BytesIO(data + bytes(1024)), str(root))
    finally:
        os.umask(old)
        monkeypatch.undo()
    for name, (uid, gid), mode in members:
        st = os.lstat(root / name)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, mode), name
    # other: chown and chmod; setuid, umasked: chmod; setgid-other: both
    assert sorted(calls) == ["chmod"] * 4 + ["chown"] * 2
    assert content.build(str(root), known=known).entries == content.build(str(root)).entries


@pytest.mark.skipif(os.geteuid() != 0, reason="unpacking sets owners: root only")
def test_a_sparse_file_named_again_is_not_given_the_hash_of_the_file_it_replaces(
        tmp_path: Path) -> None:
    """A path named again frees the inode number of what it held, which the file
    made next may get: that file (here a sparse one, hashed by the manifest's
    walk, not as it is written) must not inherit the sha256 of the one removed."""
    from stacko import content
    from stacko.formats.layertar import unpack_layer
    sparse = pax(rec(b"GNU.sparse.map", b"0,5,10,5") + rec(b"GNU.sparse.realsize", b"20"),
                 name="x", size=10, body=b"abcdeFGHIJ")
    for n in range(5):                    # in a fresh directory, and among other files
        root = tmp_path / f"root{n}"
        root.mkdir()
        data = b"".join(header(f"f{k}", 1) + pad(b"f") for k in range(n * 50))
        data += header("x", 3) + pad(b"old") + sparse
        known = unpack_layer(io.BytesIO(data), str(root))
        assert (root / "x").read_bytes() == b"abcde\0\0\0\0\0FGHIJ\0\0\0\0\0"
        built = content.build(str(root), known=known)
        assert built.entries["/x"]["sha256"] == \
            hashlib.sha256((root / "x").read_bytes()).hexdigest()
        assert built.entries == content.build(str(root)).entries


def test_checksums_over_bytes_above_127_signed_or_not() -> None:
    """The sum of a header of high bytes (a UTF-8 name), as new tars write it and
    as old ones (Sun, NeXT) did, with signed chars; one off is refused."""
    block = bytearray(header("dir/\u00e9\u00e8\u00ff"))
    assert read_all(bytes(block) + bytes(1024))[0][0].name == "dir/\u00e9\u00e8\u00ff"
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b > 127 else b for b in block)
    block[148:156] = b"%06o\0 " % signed
    assert len(read_all(bytes(block) + bytes(1024))) == 1
    block[148:156] = b"%06o\0 " % (signed + 1)
    refused(bytes(block) + bytes(1024), "not a valid tar archive")


# --- the early write-back of layers unpacked in parallel (unpacking.unpack_parallel) --------
@pytest.mark.skipif(os.geteuid() != 0, reason="unpacking sets owners: root only")
def test_an_error_of_an_early_syncfs_fails_the_import(tmp_path: Path, monkeypatch) -> None:
    """A writeback error that a layer's early syncfs sees would not be seen again
    by the final one (errseq): the import must fail on it, recording nothing."""
    import threading

    from ocigen import f, write_layout

    from stacko import durable
    from stacko.errors import StackoError
    from stacko.cli import main
    layout = tmp_path / "layout"
    write_layout(layout, [[f("a", b"1")], [f("b", b"2")], [f("c", b"3")]])
    real = durable.sync_filesystem
    early = []

    def failing(path: str) -> None:
        if threading.current_thread() is not threading.main_thread():
            early.append(path)
            raise StackoError("cannot write the data under X to disk")
        real(path)
    monkeypatch.setattr(durable, "sync_filesystem", failing)
    root = tmp_path / "root"
    assert main(["--root", str(root), "new-image", "keep"]) == 0
    before = (root / "images.json").read_bytes()
    assert main(["--root", str(root), "import-image", "x", str(layout)]) == 1
    assert early
    assert (root / "images.json").read_bytes() == before

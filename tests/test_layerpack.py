"""The layer packer writes the bytes tarfile would (issue 21: packing faster).

layerpack builds most headers itself (``ustar_header``) and buffers its
writes; the digests of what export-image and push-image write must not change
for it, since registries and stores remember them.  These hold the packer to
tarfile: header by header (hypothesis), and a whole layer of every kind of
entry packed both ways."""
from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacko.formats import layerpack

KINDS = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
         tarfile.BLKTYPE, tarfile.FIFOTYPE]
NUMBER = st.one_of(st.integers(0, 8 ** 7 + 2), st.sampled_from([0, 8 ** 7 - 1, 8 ** 7]))
BIG = st.one_of(st.integers(0, 2 ** 40), st.sampled_from([8 ** 11 - 1, 8 ** 11, -1]))
NAME = st.one_of(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1,
                         max_size=120),
                 st.text(min_size=1, max_size=20).filter(lambda s: "\0" not in s))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(name=NAME, mode=st.integers(0, 0o177777), uid=NUMBER, gid=NUMBER, size=BIG, mtime=BIG,
       kind=st.sampled_from(KINDS), linkname=st.one_of(st.just(""), NAME),
       device=st.tuples(NUMBER, NUMBER))
def test_headers_are_tarfiles(name: str, mode: int, uid: int, gid: int, size: int, mtime: int,
                              kind: bytes, linkname: str, device: tuple[int, int]) -> None:
    devices = kind in (tarfile.CHRTYPE, tarfile.BLKTYPE)
    shown = name + "/" if kind == tarfile.DIRTYPE and not name.endswith("/") else name
    ours = layerpack.ustar_header(shown, mode, uid, gid, size, mtime, kind, linkname,
                                  device if devices else None)
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = kind, mode, uid, gid
    info.size, info.mtime, info.linkname = size, mtime, linkname
    info.uname = info.gname = ""
    if devices:
        info.devmajor, info.devminor = device
    try:
        theirs = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except ValueError:          # a device number tarfile cannot write: neither do we
        assert ours is None
        return
    if len(theirs) == 512:      # no extended header: ours is the same block
        assert ours == theirs
    else:
        assert ours is None


def tree(top: Path) -> None:
    """A layer with every kind of entry, times with and without fractions of a
    second, xattrs, long and non-ASCII names, hard links, devices, whiteouts."""
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "hostname").write_text("box\n")
    (top / "etc" / "big").write_bytes(os.urandom(3 << 20))
    (top / "etc" / "empty").touch()
    os.link(top / "etc" / "hostname", top / "etc" / "alias")
    (top / ("long-" + "n" * 120)).write_bytes(b"long")
    (top / "d" / ("deep-" + "x" * 60) / ("deeper-" + "y" * 60)).mkdir(parents=True)
    (top / "caf\u00e9").write_text("non-ascii")
    (top / os.fsdecode(b"raw-\xff")).write_text("undecodable")
    os.symlink("etc/hostname", top / "link")
    os.symlink("t" * 150, top / "longlink")
    os.mkfifo(top / "fifo")
    (top / "attrs").write_text("xattrs")
    os.setxattr(top / "attrs", "user.note", b"hello")
    if os.geteuid() == 0:
        os.mknod(top / "tty", stat.S_IFCHR | 0o620, os.makedev(4, 1))
        os.mknod(top / "gone", stat.S_IFCHR, 0)                  # an overlayfs whiteout
        os.chown(top / "etc" / "hostname", 1000, 2 ** 22)        # a gid past 8**7
    for n, path in enumerate(sorted(top.rglob("*"))):
        whole = 1_600_000_000 + n
        times = (whole * 10 ** 9 + (123_456_789 if n % 3 == 0 else 0),) * 2
        os.utime(path, ns=times, follow_symlinks=False)


def test_a_layer_packs_to_tarfiles_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree(tmp_path / "layer")
    ours = io.BytesIO()
    layerpack.pack_layer(str(tmp_path / "layer"), ours)  # type: ignore[arg-type]
    monkeypatch.setattr(layerpack, "ustar_header", lambda *args: None)    # tarfile's alone
    theirs = io.BytesIO()
    layerpack.pack_layer(str(tmp_path / "layer"), theirs)  # type: ignore[arg-type]
    assert ours.getvalue() == theirs.getvalue()
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue())) as tar:
        names = tar.getnames()
    assert "etc/big" in names and "long-" + "n" * 120 in names and "caf\u00e9" in names


def test_the_packers_type_flags_are_tarfiles() -> None:
    """layerpack spells tar's type flags itself (so that a push does not load
    tarfile): the same as tarfile.  Whiteouts and xattrs it spells as the
    unpacker does, from formats/spellings.py."""
    for constant in ("REGTYPE", "LNKTYPE", "SYMTYPE", "CHRTYPE", "BLKTYPE", "DIRTYPE",
                     "FIFOTYPE", "POSIX_MAGIC"):
        assert getattr(layerpack, constant) == getattr(tarfile, constant), constant

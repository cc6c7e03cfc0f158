"""Layer compression (ISA-L gzip, libzstd): round trips through the standard
tools, the same bytes every time, and data that is corrupt or cut short
refused instead of read as a shorter layer."""
from __future__ import annotations

import gzip
import io
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import Runner, snapshot
from stacko.formats.compression import compressor, decompressed

needs_zstd = pytest.mark.skipif(shutil.which("zstd") is None,
                                reason="the zstd command is needed (tests/install-deps.sh)")


def sample(size: int, seed: int = 7) -> bytes:
    """Half text-like, half random: compressible, but not trivially."""
    rng = random.Random(seed)
    parts, total = [], 0
    while total < size:
        part = (b"line %d of some config text\n" % total) * 40 if rng.random() < 0.5 \
            else rng.randbytes(1000)
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:size]


def compress(data: bytes, how: str, writes: int = 65536) -> bytes:
    out = io.BytesIO()
    with compressor(out, how) as packed:   # type: ignore[arg-type]
        for start in range(0, len(data), writes):
            packed.write(data[start:start + writes])
        packed.finish()
    return out.getvalue()


def read_all(blob: bytes, size: int = 65536) -> bytes:
    with decompressed(io.BytesIO(blob)) as plain:   # type: ignore[arg-type]
        parts = []
        while True:
            part = plain.read(size)
            if not part:
                return b"".join(parts)
            parts.append(part)


# 3.5 MiB: several of ParallelGzip's 1 MiB blocks, primed with the block before.
DATA = sample(3_500_000)


def test_gzip_is_standard_gzip_and_deterministic() -> None:
    blob = compress(DATA, "gzip")
    assert gzip.decompress(blob) == DATA
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"    # no time, no name
    assert compress(DATA, "gzip", writes=4099) == blob       # however the writes fall
    assert read_all(blob) == DATA
    assert gzip.decompress(compress(b"", "gzip")) == b""


@needs_zstd
def test_zstd_is_read_by_the_zstd_command_and_deterministic() -> None:
    blob = compress(DATA, "zstd")
    plain = subprocess.run(["zstd", "-d", "-c", "-q"], input=blob, capture_output=True,
                           check=True).stdout
    assert plain == DATA
    assert compress(DATA, "zstd", writes=4099) == blob
    assert read_all(blob) == DATA


@needs_zstd
def test_what_the_standard_tools_write_is_read() -> None:
    """Several gzip members (as `cat a.gz b.gz` makes), and several zstd frames
    with a skippable one between them (as pzstd and seekable zstd make)."""
    half = len(DATA) // 2
    members = gzip.compress(DATA[:half]) + gzip.compress(DATA[half:])
    assert read_all(members) == DATA
    frames = [subprocess.run(["zstd", "-q", "-c"], input=part, capture_output=True,
                             check=True).stdout for part in (DATA[:half], DATA[half:])]
    skippable = b"\x5a\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"hello"
    assert read_all(frames[0] + skippable + frames[1]) == DATA
    assert read_all(b"plain, not compressed") == b"plain, not compressed"


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_data_cut_short_is_an_error(how: str) -> None:
    blob = compress(DATA, how)
    # Inside the header, inside a block, and just before the end (zstd: a
    # frame without its last block, which libzstd alone reads as the end).
    for cut in (6, len(blob) // 2, len(blob) - 3):
        with pytest.raises(EOFError):
            read_all(blob[:cut])


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_corrupt_data_is_an_oserror(how: str) -> None:
    blob = bytearray(compress(DATA, how))
    for n in range(200, 400):
        blob[n] ^= 0x5A
    with pytest.raises(OSError, match=f"corrupt {how} data"):
        read_all(bytes(blob))


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_import_of_a_cut_tarball_is_refused(stacko: Runner, root: Path, workdir: Path,
                                            how: str) -> None:
    """What a user sees: exit 1 naming the file, and nothing imported."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for n in range(20):
            data = sample(50_000, seed=n)
            info = tarfile.TarInfo(f"f{n}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = compress(out.getvalue(), how)
    archive = workdir / "rootfs.bin"
    archive.write_bytes(blob[:len(blob) - 3])
    stacko("new-image", "existing")
    before = snapshot(root)
    r = stacko("import-image", "cut", str(archive), rc=1)
    # spooled: "cannot decompress PATH"; a rootfs streamed in: "layer PATH is corrupt"
    # or "layer PATH: the layer tar ends early"
    assert f"cannot decompress {archive}" in r.stderr or f"layer {archive}" in r.stderr, \
        r.stderr
    assert "truncated" in r.stderr or "ended before" in r.stderr, r.stderr
    assert snapshot(root) == before


def gzip_cases() -> list:
    one, two = gzip.compress(DATA[:300_000], mtime=0), gzip.compress(b"tail" * 5000)
    cases = [one, one + two, one + b"\0" * 1000, one + two + b"garbage", one[:-3], one[:200],
             one[:10], b"\x1f\x8b\x09" + one[3:], compress(DATA, "gzip")]
    flipped = bytearray(one)
    flipped[len(one) // 2] ^= 0x55
    crc = bytearray(one)
    crc[-6] ^= 0x01
    with gzip.GzipFile(filename="layer.tar", mode="wb", fileobj=(extra := io.BytesIO()),
                       mtime=1) as named:
        named.write(b"named member\n" * 100)
    return cases + [bytes(flipped), bytes(crc), extra.getvalue()]


@pytest.mark.parametrize("blob", gzip_cases(), ids=lambda b: f"{len(b)}B")
def test_the_gzip_reader_is_isals_gzipfile(blob: bytes) -> None:
    """decompressed() builds isal's C gzip reader itself, without igzip (and
    its typing): the same bytes, and the same errors, as igzip.GzipFile."""
    from isal import igzip

    def outcome(read: object) -> tuple:
        try:
            return ("data", read())
        except Exception as e:      # noqa: BLE001  compared, type and words
            return (type(e).__name__, str(e))

    def ours() -> bytes:
        return read_all(blob, 10_000)

    def theirs() -> bytes:
        with igzip.GzipFile(fileobj=io.BytesIO(blob), mode="rb") as plain:
            parts = []
            while True:
                part = plain.read(10_000)
                if not part:
                    return b"".join(parts)
                parts.append(part)
    mine, isal_s = outcome(ours), outcome(theirs)
    if mine[0] == "OSError":        # decompressed() words isal's error as corrupt data
        assert isal_s[0] in ("BadGzipFile", "error", "IsalError", "OSError"), isal_s
    else:
        assert mine == isal_s

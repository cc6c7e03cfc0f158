"""What may follow a layer tar's end-of-archive (issue 18, item 8): the padding
real writers leave, and no more."""
from __future__ import annotations

import io
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

from stacko.formats.compression import decompressed
from stacko.formats.layertar import unpack_layer
from stacko.formats.tarfields import BadLayer
from stacko.formats.tarend import LIMIT


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("box\n")
    (src / "data").write_bytes(bytes(range(256)) * 40)
    return src


def python_tar(src: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(src.rglob("*")):
            tar.add(path, str(path.relative_to(src)), recursive=False)
    return out.getvalue()


def go_style(src: Path) -> bytes:
    """As Go's archive/tar writes it: the two zero blocks and no padding."""
    data = python_tar(src).rstrip(b"\0")
    data += b"\0" * (-len(data) % 512)
    return data + b"\0" * 1024


def gnu_tar(src: Path, *options: str) -> bytes:
    return subprocess.run(["tar", "-C", str(src), "-c", *options, "."], check=True,
                          capture_output=True).stdout


class Counting:
    def __init__(self, inner: io.BufferedIOBase) -> None:
        self.inner, self.count = inner, 0

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.count += len(data)
        return data


def unpack(data: bytes, target: Path) -> int:
    """Unpacks data (compressed or not) into target; the bytes of tar it read."""
    target.mkdir()
    with decompressed(io.BytesIO(data)) as plain:  # type: ignore[arg-type]
        counted = Counting(plain)
        unpack_layer(counted, str(target))  # type: ignore[arg-type]
    return counted.count


@pytest.mark.parametrize("writer", ["gnu", "gnu -b 2048", "python", "go"])
def test_the_padding_of_real_writers_is_accepted(tree: Path, tmp_path: Path, writer: str) -> None:
    data = {"gnu": lambda: gnu_tar(tree), "gnu -b 2048": lambda: gnu_tar(tree, "-b", "2048"),
            "python": lambda: python_tar(tree), "go": lambda: go_style(tree)}[writer]()
    for n, blob in enumerate((data, zstandard.ZstdCompressor().compress(data))):
        out = tmp_path / f"out{n}"
        assert unpack(blob, out) == len(data)
        assert (out / "etc" / "hostname").read_text() == "box\n"


def test_zeros_without_end_after_the_archive_are_refused_quickly(tree: Path,
                                                                 tmp_path: Path) -> None:
    """256 MiB of zeros, 8 KiB of zstd: read no further than the limit."""
    out = io.BytesIO()
    writer = zstandard.ZstdCompressor().stream_writer(out, closefd=False)
    writer.write(gnu_tar(tree))
    zeros = b"\0" * (1 << 20)
    for _ in range(256):
        writer.write(zeros)
    writer.flush(zstandard.FLUSH_FRAME)
    assert len(out.getvalue()) < 1 << 20
    start = time.monotonic()
    with pytest.raises(BadLayer) as e:
        unpack(out.getvalue(), tmp_path / "out")
    assert time.monotonic() - start < 5
    assert "end-of-archive" in e.value.message


@pytest.mark.parametrize("extra", [b"junk", b"\0" * 600 + b"x", "second archive"])
def test_data_after_the_end_is_refused(tree: Path, tmp_path: Path, extra: object) -> None:
    data = gnu_tar(tree)
    data += data if extra == "second archive" else extra  # type: ignore[operator]
    with pytest.raises(BadLayer) as e:
        unpack(data, tmp_path / "out")
    assert "end-of-archive" in e.value.message


def test_padding_up_to_the_limit_is_accepted(tree: Path, tmp_path: Path) -> None:
    data = go_style(tree)
    assert unpack(data + b"\0" * (LIMIT - 1024), tmp_path / "a") == len(data) + LIMIT - 1024
    with pytest.raises(BadLayer):
        unpack(data + b"\0" * (LIMIT - 1024 + 1), tmp_path / "b")

"""Test helpers: write OCI image layouts by hand (a generator no stacko code
shares), build images with umoci, and describe a directory tree exactly."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

Member = Tuple[tarfile.TarInfo, bytes]
MTIME = 1_600_000_000


# --- layer members -----------------------------------------------------------------
def _info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0,
          mtime: float = MTIME, xattrs: Optional[Dict[str, bytes]] = None,
          mtime_text: str = "") -> tarfile.TarInfo:
    """mtime_text: a PAX mtime with a fraction ("1600000000.123456789")."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, int(mtime)
    if mtime_text:
        info.pax_headers["mtime"] = mtime_text
    for key, value in (xattrs or {}).items():
        info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    return info


def f(name: str, data: bytes = b"", mode: int = 0o644, **kw) -> Member:
    info = _info(name, tarfile.REGTYPE, mode, **kw)
    info.size = len(data)
    return info, data


def d(name: str, mode: int = 0o755, **kw) -> Member:
    return _info(name, tarfile.DIRTYPE, mode, **kw), b""


def sym(name: str, target: str, **kw) -> Member:
    info = _info(name, tarfile.SYMTYPE, 0o777, **kw)
    info.linkname = target
    return info, b""


def hard(name: str, target: str) -> Member:
    info = _info(name, tarfile.LNKTYPE, 0o644)
    info.linkname = target
    return info, b""


def fifo(name: str, mode: int = 0o600) -> Member:
    return _info(name, tarfile.FIFOTYPE, mode), b""


def wh(name: str) -> Member:
    parent, _, base = name.rpartition("/")
    return f(f"{parent}/.wh.{base}" if parent else f".wh.{base}")


def opq(directory: str) -> Member:
    return f(f"{directory}/.wh..wh..opq")


def layer_tar(members: Sequence[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True,
                              check=True).stdout
    return data


MEDIA = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
         "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
         "none": "application/vnd.oci.image.layer.v1.tar"}


def _put(layout: Path, data: bytes) -> Dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def write_layout(layout: Path, layers: Sequence[Sequence[Member]], ref: str = "latest",
                 compression: Sequence[str] = (), names: Sequence[Optional[str]] = (),
                 add: bool = False, created: Sequence[str] = ()) -> Dict[str, object]:
    """An OCI layout with one image of the given layers (bottom first).

    compression: per layer ("gzip" unless given); names: stacko annotations;
    created: per layer, the config's history times.
    add=True adds the image to a layout that exists."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descriptors, diff_ids = [], []
    for n, members in enumerate(layers):
        tar = layer_tar(members)
        how = compression[n] if n < len(compression) else "gzip"
        desc = {"mediaType": MEDIA[how], **_put(layout, compress(tar, how))}
        if n < len(names) and names[n]:
            desc["annotations"] = {"io.stacko.image.name": names[n]}
        descriptors.append(desc)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    if created:
        config["history"] = [{"created": when} for when in created]
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_put(layout, json.dumps(config).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": descriptors}
    manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     **_put(layout, json.dumps(manifest).encode()),
                     "annotations": {"org.opencontainers.image.ref.name": ref}}
    index_path = layout / "index.json"
    manifests = json.loads(index_path.read_text())["manifests"] if add else []
    index_path.write_text(json.dumps({"schemaVersion": 2, "manifests": manifests + [manifest_desc]}))
    return {"manifest": manifest, "config": config, "layers": descriptors}


def tar_dir(directory: Path, target: Path) -> Path:
    with tarfile.open(target, "w") as tar:
        for entry in sorted(os.listdir(directory)):
            tar.add(directory / entry, arcname=entry)
    return target


# --- umoci ---------------------------------------------------------------------------
def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, **kw)


def umoci_image(layout: Path, tag: str, steps: Sequence[Callable[[Path], None]],
                scratch: Path) -> None:
    """Build an image with umoci: one layer per step, each step edits the rootfs."""
    if not (layout / "index.json").exists():
        sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:{tag}")
    for n, step in enumerate(steps):
        bundle = scratch / f"bundle-{tag}-{n}"
        sh("umoci", "unpack", "--image", f"{layout}:{tag}", bundle)
        step(bundle / "rootfs")
        sh("umoci", "repack", "--image", f"{layout}:{tag}", bundle)
        sh("rm", "-rf", bundle)


def umoci_rootfs(layout: Path, tag: str, target: Path) -> Path:
    sh("umoci", "unpack", "--image", f"{layout}:{tag}", target)
    return target / "rootfs"


# --- describing trees -------------------------------------------------------------------
IGNORED_XATTRS = ("trusted.overlay.", "security.selinux")


def describe(root: Path, dir_mtimes: bool = True) -> Dict[str, tuple]:
    """Every entry below root (not root itself): type, mode, owner, mtime,
    content hash, symlink target, device number, xattrs and hard-link group."""
    found: Dict[str, tuple] = {}
    inodes: Dict[int, List[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            content: object = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                content = (os.major(st.st_rdev), os.minor(st.st_rdev))
            xattrs = tuple(sorted(
                (k, os.getxattr(path, k, follow_symlinks=False))
                for k in os.listxattr(path, follow_symlinks=False)
                if not k.startswith(IGNORED_XATTRS)))
            mtime = st.st_mtime_ns if dir_mtimes or not stat.S_ISDIR(st.st_mode) else None
            found[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime,
                          content, xattrs)
    for group in inodes.values():
        for rel in group:
            found[rel] = found[rel] + (tuple(sorted(group)),)
    return found


def diff_trees(a: Dict[str, tuple], b: Dict[str, tuple]) -> List[str]:
    """Readable differences, for assertion messages."""
    lines = []
    for rel in sorted(set(a) | set(b)):
        if a.get(rel) != b.get(rel):
            lines.append(f"{rel}: {a.get(rel)} != {b.get(rel)}")
    return lines

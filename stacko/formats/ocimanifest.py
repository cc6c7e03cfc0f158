"""The OCI documents of an image stack: media types, the config and the manifest.

What export-image writes into an archive and push-image sends to a registry,
built in memory from what is known of each layer (its descriptor and diff_id).
Deterministic: keys sorted, no spaces, so the same stack gives the same bytes
and digests.  Only lean.dump_json and lean.sha256: a push whose layers the registry has
already builds its config and manifest without importing tarfile, the
packers or OpenSSL (docs/bench.md).
"""
from __future__ import annotations

import os

from stacko.lean import dump_json, sha256
from stacko.names import utc_time
from stacko.records import Image

REF_ANNOTATION = "org.opencontainers.image.ref.name"
NAME_ANNOTATION = "io.stacko.image.name"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
               "none": "application/vnd.oci.image.layer.v1.tar"}
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


def host_architecture() -> str:
    # os.uname() is what platform.machine() reads on Linux, without importing
    # platform (docs/startup.md: the archive and registry commands).
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


def json_bytes(data: object) -> tuple[bytes, str]:
    """The canonical bytes of a document, and their digest."""
    # json.dumps(data, sort_keys=True, separators=(",", ":")), without json
    # (and re, enum): ~6 ms of a push (docs/bench.md).
    text = dump_json(data, compact=True).encode("utf-8")
    return text, "sha256:" + sha256(text).hexdigest()  # type: ignore[attr-defined]


def layer_descriptor(image: Image, media: str, digest: str, size: int) -> dict:
    return {"mediaType": media, "digest": digest, "size": size,
            "annotations": {NAME_ANNOTATION: image.name}}


def config_document(chain: list[Image], diff_ids: list[str]) -> dict:
    """The image config of a stack (bottom first): the top image's run
    settings, one history entry per layer."""
    history = []
    for image in chain:
        entry = {"created_by": f"stacko image {image.name}"}
        if image.created:
            entry["created"] = utc_time(image.created)
        history.append(entry)
    settings = chain[-1].settings or {}
    config: dict = {"architecture": host_architecture(), "os": "linux",
                    "config": dict(settings.get("config") or {}),
                    "rootfs": {"type": "layers", "diff_ids": diff_ids},
                    "history": history}
    if chain[-1].created:
        config["created"] = utc_time(chain[-1].created)
    return config


def manifest_document(chain: list[Image], layers: list[dict], config_digest: str,
                      config_size: int) -> dict:
    """The manifest of a stack whose layers are described (bottom first); the
    top image's annotations go into it."""
    manifest: dict = {
        "schemaVersion": 2, "mediaType": MANIFEST_TYPES[0],
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_size},
        "layers": layers}
    annotations = (chain[-1].settings or {}).get("annotations")
    if annotations:
        manifest["annotations"] = dict(annotations)
    return manifest

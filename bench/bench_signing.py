"""Benchmark: what the trust policy costs a pull (issue 20's goals).

One registry (Debian's docker-registry, on 127.0.0.1) holds the medium image
of bench_registry (3 gzip layers, about 40 MB), signed by skopeo with a
throwaway GnuPG key (the signature in a file:// lookaside), and an unsigned
image of about 200 MB in one layer.  Rows, each the median of ROUNDS runs,
interleaved:

* signed pull: pull-image under a signedBy policy, beside the same pull under
  insecureAcceptAnything (goal: at most 1.05x).  The two run as a pair, in a
  random order, and the ratio is the median of the pairs' ratios: this
  machine's speed changes within minutes (pulls of 0.42 s, then of 0.60 s),
  and a pair's two pulls see the same speed, while two medians taken over
  the whole run do not;
* refusal: pull-image of the unsigned 200 MB image under a signedBy policy,
  which must fetch no layer (goal: under 0.2 s).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Dict, List

import common

TITLE = "signing: a pull under a signedBy policy vs under insecureAcceptAnything"
ROUNDS = 40


def run() -> List[dict]:
    common.require_root("bench_signing")
    for tool in ("docker-registry", "skopeo", "gpg"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is needed (tests/install-deps.sh)")
    # Every pull into a root of its own on one fresh loop ext4, none deleted
    # between runs (common.loop_ext4): on /tmp, with each root removed after
    # its pull, the two sides' medians moved from 0.70x to 1.10x run to run.
    # Room for every round's two pulls (~45 MB each, none deleted), the 200 MB
    # image, its archive and the registry's copy.
    size = (1 << 30) + common.repeats(ROUNDS) * (120 << 20)
    with common.loop_ext4("signing", size=size) as fs:
        return measure(Path(fs))


def measure(base: Path) -> List[dict]:
    import bench_registry
    registryd = bench_registry.registry_module()
    home = base / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home)}
    common.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                "Bench <bench@example.com>", "ed25519", "sign", "never"], env=env)
    listing = common.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"],
                         env=env).stdout.decode()
    fpr = next(x.split(":")[9] for x in listing.splitlines() if x.startswith("fpr:"))
    (base / "key.pub").write_bytes(common.run(["gpg", "--batch", "--export", fpr],
                                              env=env).stdout)
    regd = base / "registries.d"
    regd.mkdir()
    (regd / "bench.yaml").write_text(f"default-docker:\n  sigstore: file://{base}/sigs\n"
                                     f"  sigstore-staging: file://{base}/sigs\n")
    signed = base / "signed.json"
    signed.write_text(json.dumps({"default": [{"type": "signedBy", "keyType": "GPGKeys",
                                               "keyPath": str(base / "key.pub")}]}))
    accept = base / "accept.json"
    accept.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    archives = bench_registry.make_layouts(base)
    big = base / "big.tar"
    import gzip
    layer = common_layer(200 << 20)
    common.write_oci_archive(big, [layer], "big", compress=lambda t: gzip.compress(
        t, compresslevel=1, mtime=0), media_type="application/vnd.oci.image.layer.v1.tar+gzip")
    registry = registryd.Registry(base / "registry").start()
    try:
        return pulls(base, registry, env, fpr, regd, signed, accept, archives, big)
    finally:
        registry.stop()
        # gpg --quick-gen-key started a gpg-agent in the home on the loop ext4:
        # left running, it keeps that filesystem, and its backing file in
        # /dev/shm (gigabytes of memory), alive after the bench's unmount.
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=dict(os.environ, **env),
                       capture_output=True)


def pulls(base: Path, registry: object, env: Dict[str, str], fpr: str, regd: Path,
          signed: Path, accept: Path, archives: Dict[str, Path], big: Path) -> List[dict]:
    host = registry.host
    common.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", "--sign-by", fpr,
                "--registries.d", str(regd), f"oci-archive:{archives['v1']}",
                f"docker://{host}/app:v1"], env=env)
    common.run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                f"oci-archive:{big}", f"docker://{host}/big:v1"])
    counter = iter(range(10_000))

    def pull(policy: Path, ref: str, status: int = 0) -> float:
        root = base / f"root-{next(counter)}"
        argv = common.stacko_argv() + ["--root", str(root), "pull-image", "x", ref,
                                       "--policy", str(policy), "--registries.d",
                                       str(regd), "--tls-verify=false"]
        return common.timed(lambda: check(argv, status))

    def pair() -> Dict[str, float]:
        policies = {"signed": signed, "accept": accept}
        order = list(policies)
        random.shuffle(order)
        return {k: pull(policies[k], f"{host}/app:v1") for k in order}

    cases = {
        "pair": pair,
        "refuse": lambda: {"refuse": pull(signed, f"{host}/big:v1", status=1)},
    }
    samples = common.interleave(cases, common.repeats(ROUNDS), warmup=1)
    ours, theirs = (common.median_ms(samples[k]) / 1000 for k in ("signed", "accept"))
    ratio = statistics.median(s / a for s, a in zip(samples["signed"], samples["accept"]))
    refuse = common.median_ms(samples["refuse"]) / 1000
    return [common.row("pull under signedBy (GnuPG), ~40 MB", ours,
                       "insecureAcceptAnything", theirs, "s", "<= 1.05x", ratio <= 1.05,
                       ratio=round(ratio, 4)),
            common.row("refuse an unsigned 200 MB image", refuse, None, None, "s", "< 0.2 s",
                       refuse < 0.2)]


def check(argv: List[str], status: int) -> None:
    proc = subprocess.run(argv, env=common.child_env(), capture_output=True)
    if proc.returncode != status:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')}")


def common_layer(size: int) -> bytes:
    """One tar layer of about size bytes of incompressible data."""
    import io
    import tarfile
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        chunk = 16 << 20
        for n in range(max(1, size // chunk)):
            info = tarfile.TarInfo(f"data/blob{n}")
            info.size, info.mtime = chunk, 1_600_000_000
            tar.addfile(info, io.BytesIO(os.urandom(chunk)))
    return out.getvalue()

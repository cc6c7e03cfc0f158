"""gpg.Keyring: gpgv checks a signature with the policy's key files as its
keyrings, and whatever it does not accept is judged again by gpg after an
import, as before gpgv was used; against the real gpg, gpgv and prlimit."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import List

import pytest

from gpgkeys import Keys, keys  # noqa: F401  (keys: the fixture)

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("gpg", "gpgv", "prlimit")),
    reason="gpg, gpgv and prlimit are needed (tests/install-deps.sh)")

DATA = b'{"critical": {}}'


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> List[List[str]]:
    """The argv of every command gpg.py runs, and the size of the file each
    verification wrote its output to (the word after --output)."""
    from stacko import run
    from stacko.signing import gpg
    seen: List[List[str]] = []
    real_run, real_spawn = run.run, run.spawn

    def note(argv: List[str]) -> None:
        seen.append(list(argv))
        if "--output" in argv:
            out = argv[argv.index("--output") + 1]
            seen[-1].append(f"wrote={os.path.getsize(out) if os.path.exists(out) else 0}")

    def recording(argv: List[str], **kw: object) -> object:
        result = real_run(argv, **kw)
        note(argv)
        return result

    class Recorded:
        def __init__(self, argv: List[str]) -> None:
            self.argv, self.child = argv, real_spawn(argv)

        def wait(self) -> object:
            result = self.child.wait()
            note(self.argv)
            return result
    monkeypatch.setattr(gpg.run, "run", recording)
    monkeypatch.setattr(gpg.run, "spawn", Recorded)
    return seen


def programs(runs: List[List[str]]) -> List[str]:
    return [argv[2] if argv[0] == "prlimit" else "gpg " + next(
        a for a in argv if a in ("--import", "--decrypt")) for argv in runs]


def test_keyring_bytes_decodes_armour_as_gpg_dearmor_does(keys: Keys) -> None:
    from stacko.signing.gpg import keyring_bytes
    binary = b"".join(keys.pub[n].read_bytes() for n in ("alice", "bob"))
    armoured = keys.gpg("--armor", "--export", keys.fpr["alice"], keys.fpr["bob"]).stdout
    assert keyring_bytes(armoured) == binary
    dearmored = keys.gpg("--dearmor", input=armoured).stdout
    assert keyring_bytes(armoured) == dearmored
    with_header = armoured.replace(b"-----\n\n", b"-----\nVersion: test 1\nComment: x\n\n", 1)
    assert keyring_bytes(b"leading text\n" + with_header) == binary
    two_blocks = b"".join(keys.gpg("--armor", "--export", keys.fpr[n]).stdout
                          for n in ("alice", "bob"))
    assert keyring_bytes(two_blocks) == binary
    assert keyring_bytes(binary) == binary
    lines = armoured.splitlines()
    crc = next(i for i, line in enumerate(lines) if line.startswith(b"="))
    lines[crc] = b"=AAAA" if lines[crc] != b"=AAAA" else b"=AAAB"
    assert keyring_bytes(b"\n".join(lines)) is None                 # checksum off
    assert keyring_bytes(armoured.rsplit(b"-----END", 1)[0]) is None  # cut short
    assert keyring_bytes(b"not a key at all\n") is None
    assert keyring_bytes(armoured.replace(b"PUBLIC KEY", b"PRIVATE KEY")) is None


def test_a_good_signature_is_one_gpgv_run(keys: Keys, runs: List[List[str]]) -> None:
    from stacko.signing import gpg
    armoured = keys.gpg("--armor", "--export", keys.fpr["alice"]).stdout
    for key in (keys.pub["alice"].read_bytes(), armoured):
        runs.clear()
        with gpg.Keyring([key]) as ring:
            assert ring.verify(keys.sign("alice", DATA)) == (keys.fpr["alice"], DATA)
        assert programs(runs) == ["gpgv"]


def test_meanwhile_runs_once_while_the_first_check_runs(keys: Keys,
                                                      runs: List[List[str]]) -> None:
    """pull-image loads what its layers need while gpgv works: the Keyring runs
    that work once, after gpgv started and before its end is waited for."""
    from stacko.signing import gpg
    alive = []

    def work() -> None:
        runs.append(["meanwhile"])
        alive.append(len(children()))       # gpgv, started and not waited for yet
    with gpg.Keyring([keys.pub["alice"].read_bytes()], meanwhile=work) as ring:
        for _ in range(2):
            assert ring.verify(keys.sign("alice", DATA)) == (keys.fpr["alice"], DATA)
    assert [r[0] for r in runs] == ["meanwhile", "prlimit", "prlimit"] and alive == [1]


def children() -> List[int]:
    """This process's children, running or not yet waited for."""
    me = str(os.getpid())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] == me:
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_what_gpgv_refuses_gpg_judges_as_before(keys: Keys, runs: List[List[str]]) -> None:
    """A stranger's signature: gpgv, then the import and gpg, whose verdict is
    the message it always was; a key gpgv cannot read is still accepted."""
    from stacko.signing import gpg
    from stacko.signing.policyfile import PolicyError
    alice = keys.pub["alice"].read_bytes()
    with gpg.Keyring([alice]) as ring:
        with pytest.raises(gpg.BadSignature) as e:
            ring.verify(keys.sign("bob", DATA))
        assert e.value.unknown_key and "not one of the policy's" in e.value.detail
        assert programs(runs) == ["gpgv", "gpg --import", "gpg --decrypt"]
        runs.clear()          # imported once: later signatures go to gpg alone
        assert ring.verify(keys.sign("alice", DATA)) == (keys.fpr["alice"], DATA)
        assert programs(runs) == ["gpg --decrypt"]
    runs.clear()
    broken = b"\x99\x00\x04junk"          # a packet header, then nothing gpgv can read
    with gpg.Keyring([broken, alice]) as ring:
        assert ring.verify(keys.sign("alice", DATA)) == (keys.fpr["alice"], DATA)
    assert programs(runs) == ["gpgv", "gpg --import", "gpg --decrypt"]
    with gpg.Keyring([b"not a key"]) as ring:
        with pytest.raises(PolicyError, match="no GnuPG public key could be imported"):
            ring.verify(keys.sign("alice", DATA))


def test_without_gpgv_or_prlimit_gpg_checks(keys: Keys, runs: List[List[str]],
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from stacko.signing import gpg
    only_gpg = tmp_path / "bin"
    only_gpg.mkdir()
    (only_gpg / "gpg").symlink_to(shutil.which("gpg"))
    monkeypatch.setenv("PATH", str(only_gpg))
    with gpg.Keyring([keys.pub["alice"].read_bytes()]) as ring:
        assert ring.verify(keys.sign("alice", DATA)) == (keys.fpr["alice"], DATA)
    assert programs(runs) == ["gpg --import", "gpg --decrypt"]    # prlimit: not found


def test_a_compressed_bomb_is_cut_at_the_limit(keys: Keys, runs: List[List[str]]) -> None:
    """gpgv has no --max-output: prlimit bounds the file it writes; gpg then
    stops at --max-output.  Neither writes more than MAX_SIGNED + 1 bytes."""
    from stacko.signing import gpg
    bomb = keys.gpg("--local-user", keys.fpr["alice"], "--compress-level", "9", "--sign",
                    input=b"\0" * (gpg.MAX_SIGNED * 3)).stdout
    assert len(bomb) < gpg.MAX_SIGNED // 50
    with gpg.Keyring([keys.pub["alice"].read_bytes()]) as ring:
        with pytest.raises(gpg.BadSignature):
            ring.verify(bomb)
    assert programs(runs) == ["gpgv", "gpg --import", "gpg --decrypt"]
    written = [int(argv[-1].split("=")[1]) for argv in runs if argv[-1].startswith("wrote=")]
    assert len(written) == 2 and max(written) <= gpg.MAX_SIGNED + 1, written


def test_an_expired_keys_signature_is_refused_by_both(tmp_path: Path,
                                                      runs: List[List[str]]) -> None:
    """gpgv says EXPKEYSIG (and VALIDSIG) for it: not a good signature."""
    from stacko.signing import gpg
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))

    def gpg_(*argv: str, **kw: object) -> bytes:
        return subprocess.run(["gpg", "--batch", "--no-tty", *argv], check=True, env=env,
                              capture_output=True, **kw).stdout
    try:
        gpg_("--passphrase", "", "--faked-system-time", "20200101T000000",
             "--quick-gen-key", "old <old@example.com>", "ed25519", "sign", "1d")
        signed = gpg_("--faked-system-time", "20200101T010000", "--local-user",
                      "old@example.com", "--sign", input=DATA)
        key = gpg_("--export", "old@example.com")
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True)
    with gpg.Keyring([key]) as ring:
        with pytest.raises(gpg.BadSignature) as e:
            ring.verify(signed)
        assert not e.value.unknown_key
    assert programs(runs) == ["gpgv", "gpg --import", "gpg --decrypt"]

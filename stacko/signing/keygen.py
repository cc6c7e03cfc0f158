"""generate-sigstore-key: a new key pair in the files skopeo's command of that
name writes (PREFIX.private, mode 0600, and PREFIX.pub).

Neither file is ever overwritten: both are created with O_EXCL, the public one
only once the private one is on disk, and a failure removes what this command
made.  The passphrase comes from the first line of --passphrase-file, or from
the terminal, asked twice; never from the command line or the environment.
"""
from __future__ import annotations

import os

from stacko.errors import AlreadyExists, StackoError
from stacko.quoting import quote


def ask_passphrase() -> bytes:
    """The passphrase, typed twice on the terminal (not echoed)."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        raise StackoError("no terminal to ask for the passphrase of the new key",
                          hint="give it with --passphrase-file FILE (its first line)") from None
    os.close(tty)
    import getpass
    try:
        first = getpass.getpass("Passphrase for the new private key: ")
        second = getpass.getpass("The same passphrase again: ")
    except EOFError:
        raise StackoError("no passphrase was given") from None
    if first != second:
        raise StackoError("the two passphrases differ; no key was written")
    return first.encode("utf-8")


def write_new(path: str, data: bytes, mode: int) -> None:
    """Create path (never an existing file, never through a symbolic link) and
    make its data durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        os.fchmod(fd, mode)                    # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def generate_key_files(prefix: str, passphrase_file: str | None = None) -> tuple[str, str]:
    """Writes PREFIX.private and PREFIX.pub; returns their paths."""
    from stacko.signing import cosignkey
    private_path, public_path = prefix + ".private", prefix + ".pub"
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise AlreadyExists(f"{quote(path)} exists already; it is never overwritten",
                                hint="choose another --output-prefix, or move the old key away")
    directory = os.path.dirname(os.path.abspath(private_path))
    if not os.path.isdir(directory):
        raise StackoError(f"the directory {quote(directory)} does not exist",
                          hint="create it first, or choose another --output-prefix")
    if passphrase_file is not None:
        passphrase = cosignkey.read_passphrase_file(passphrase_file)
    else:
        passphrase = ask_passphrase()
    private, public = cosignkey.generate(passphrase)
    made = []
    try:
        for path, data, mode in ((private_path, private, 0o600), (public_path, public, 0o644)):
            try:
                write_new(path, data, mode)
            except FileExistsError:
                raise AlreadyExists(f"{quote(path)} appeared while the key was made; "
                                    "it is never overwritten") from None
            except OSError as e:
                raise StackoError(f"cannot write {quote(path)}: {e.strerror}") from None
            made.append(path)
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StackoError(f"cannot sync {quote(directory)}: {e.strerror}") from None
    except BaseException:
        for path in made:
            try:
                os.unlink(path)
            except OSError:
                pass
        raise
    return private_path, public_path

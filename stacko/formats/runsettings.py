"""An image's run settings (the OCI config's Env, Cmd, Entrypoint, WorkingDir,
User, Labels, ExposedPorts, Volumes, StopSignal) and annotations, as set on the
command line: ``new-image NAME PARENT --config Cmd='["/bin/app"]' --config
Env=MODE=prod --annotation org.opencontainers.image.version=1.4``.

A child starts with its parent's settings; each ``--config KEY=VALUE`` then
changes one: Env, Labels, ExposedPorts and Volumes add an entry (Env and Labels
replace one of the same name), the others are replaced; ``KEY=`` with nothing
after it clears KEY.  Cmd and Entrypoint take a JSON array, or a string split
as a shell would split it."""
from __future__ import annotations

import json

from stacko.errors import UsageError

KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes",
        "StopSignal")


def parse(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq:
        raise UsageError(f"--config {text!r}: write KEY=VALUE")
    for known in KEYS:
        if key.lower() == known.lower():
            return known, value
    raise UsageError(f"--config {text!r}: {key!r} is no run setting",
                     hint="the settings are " + ", ".join(KEYS))


def apply(settings: dict[str, object] | None, configs: list[str],
          annotations: list[str]) -> dict[str, object] | None:
    """settings changed by the --config and --annotation options, in order."""
    import shlex
    config = dict((settings or {}).get("config") or {})
    notes = dict((settings or {}).get("annotations") or {})
    for text in configs:
        key, value = parse(text)
        if value == "":
            config.pop(key, None)
        elif key == "Env":
            name = value.partition("=")[0]
            config[key] = [e for e in config.get(key) or [] if e.partition("=")[0] != name] \
                + [value]
        elif key == "Labels":
            label, _, text_value = value.partition("=")
            config[key] = {**(config.get(key) or {}), label: text_value}
        elif key in ("ExposedPorts", "Volumes"):
            config[key] = {**(config.get(key) or {}), value: {}}
        elif key in ("Cmd", "Entrypoint"):
            if value.lstrip().startswith("["):
                try:
                    words = json.loads(value)
                except ValueError as e:
                    raise UsageError(f"--config {text!r}: not a JSON array ({e})") from None
                if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                    raise UsageError(f"--config {text!r}: not a JSON array of strings")
            else:
                words = shlex.split(value)
            config[key] = words
        else:
            config[key] = value
    for text in annotations:
        key, eq, value = text.partition("=")
        if not eq or not key:
            raise UsageError(f"--annotation {text!r}: write KEY=VALUE")
        if value:
            notes[key] = value
        else:
            notes.pop(key, None)
    result = {}
    if config:
        result["config"] = config
    if notes:
        result["annotations"] = notes
    return result or None

"""The rules for the names of images and stackpoints, and for times as stacko
writes them (RFC 3339 in UTC, to the second).  Kept apart from the records
(records.py) that hold them: argument checks need the rules without the records."""
from __future__ import annotations

from stacko.errors import InvalidName

# Names are 1-128 characters of these, starting with a letter or digit.  Checked
# with str methods, not a regular expression: `re` (with enum) costs every start
# of a command more than a listing's whole work (docs/startup.md).
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_NAME_CHARS = _ALNUM + "._+-"


def is_name(text: object) -> bool:
    """Whether text is a valid image or stackpoint name."""
    return (isinstance(text, str) and 0 < len(text) <= 128 and text[0] in _ALNUM
            and not text.strip(_NAME_CHARS))


def check_name(name: str, what: str = "name") -> str:
    if not is_name(name):
        shown = name if len(name) <= 40 else name[:40] + "…"
        from stacko.quoting import quoted
        raise InvalidName(
            f"invalid {what} {quoted(shown)}",
            hint="names are 1-128 characters of A-Z a-z 0-9 . _ + -, "
                 "starting with a letter or digit")
    return name


ISO_TIME = (r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:[.,]\d+)?"
            r"([Zz]|[+-]\d\d:?\d\d)?")


def is_utc_time(text: str) -> bool:
    """Whether text is a time as stacko writes it: 2026-11-25T20:22:05Z."""
    return (len(text) == 20 and text[4] == text[7] == "-" and text[10] == "T"
            and text[13] == text[16] == ":" and text[19] == "Z"
            and (text[:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16]
                 + text[17:19]).isdecimal())      # isdecimal: what \d matches


def utc_time(text: str) -> str:
    """A time as stacko writes it, RFC 3339 in UTC to the second ("…T20:22:05Z"),
    from what records or archives hold ("…+00:00", "….187251933Z", "…+02:00").
    What is not a time at all is left as it is, for the reader to see."""
    if not text or is_utc_time(text):
        return text
    import re         # here: times already in our form (nearly all) do without it
    m = re.fullmatch(ISO_TIME, text.strip())
    if m is None:
        return text
    import datetime
    offset = m.group(3) or "+00:00"          # RFC 3339 wants an offset; none: UTC
    if offset in ("Z", "z"):
        offset = "+00:00"
    elif ":" not in offset:
        offset = offset[:3] + ":" + offset[3:]
    try:
        when = datetime.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}{offset}")
        return when.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError):
        return text

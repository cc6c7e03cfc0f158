"""Every exit status of stacko, in one place.

cli.main returns them; tools/gen_manpage.py writes the man page's EXIT STATUS
from STATUSES, and tests/test_exitstatus.py holds README's table to it.  A
primitive: it imports nothing.
"""
from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
INTERRUPTED = 130       # SIGINT (Ctrl-C): 128 + 2, as shells report a command killed by it
TERMINATED = 143        # SIGTERM: 128 + 15, as for SIGINT

# (status, meaning): plain text, `command` marks what the reader types.
STATUSES = (
    (OK, "success (`is-stackpoint-mounted`: mounted)"),
    (FAILED, "the operation failed, with `stacko: error: …` on stderr; nothing was changed "
             "(`is-stackpoint-mounted`: not mounted; `check`, `verify-image`: a problem "
             "was found)"),
    (USAGE, "bad usage or an invalid name (names are 1 to 128 characters of "
            "`A-Z a-z 0-9 . _ + -` and start with a letter or a digit)"),
    (INTERRUPTED, "interrupted with Ctrl-C (SIGINT); what was begun has been undone"),
    (TERMINATED, "terminated by SIGTERM (`systemctl stop`, `kill`, a timeout); what was "
                 "begun has been undone"),
)

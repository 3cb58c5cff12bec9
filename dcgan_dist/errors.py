"""The one base of every error a user can fix, and how every command line tool reports it.

Each layer raises its own subclass (ConfigError, DataError, CheckpointError, ...) with a message
that names the key or file and the fix. A CLI catches `UserError` alone: it prints that message
as one paragraph, without a traceback, and exits with status 2. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("dcgan_dist")

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input or a state the user must change; the message says what, where and how to fix it."""


def report(error: UserError) -> int:
    """Say a user error the way every CLI does and return the exit status for it: through the log
    when the tool has set one up (timestamped, also in a run's log.txt), else as `error: ...`."""
    if log.handlers:
        log.error("%s", error)
    else:
        print(f"error: {error}", file=sys.stderr)
    return EXIT_USER_ERROR

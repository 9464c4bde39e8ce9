# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""How every entry point ends on an error: the project's own errors as one line on stderr, bugs with their traceback.

The project's own errors are the ones a user can fix: bad data (`iclevr.labels.BadDataError`), bad flags, layouts or
condition files (``ValueError`` raised with a message that names the problem and the fix), and paths that are
missing, taken or unwritable, and a failed Hub upload (which names how to retry). The disk-space checks, the writer lock and checkpoint verification already stop with a
one-line ``SystemExit``. Anything else (``RuntimeError``, ``TypeError``, ``KeyError``, ...) is a bug, and keeps its
traceback. ``ICLEVR_DEBUG=1`` keeps the traceback for every error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

# ConnectionError: a failed Hub upload (pipeline_iclevr.HubUploadError), which the user retries.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
               ConnectionError)
DEBUG_VARIABLE = "ICLEVR_DEBUG"


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def run(main: Callable[[], object]) -> None:
    """Call an entry point's ``main()``; a user error ends the process with its message on stderr and exit code 1."""
    try:
        main()
    except USER_ERRORS as error:
        if debugging():
            raise
        message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the message's layout
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None

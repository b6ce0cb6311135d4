"""The one error type of the library: a problem the user can fix, said in one line.

Library code raises :class:`AstroganError` with a message that names the file or param and the fix;
each entry point (``python -m pipeline.stages.<name>``, ``python -m pipeline.release``, the scripts)
runs its ``main`` through :func:`run_main`, which prints that line on stderr and exits with status
1, and the ``astrogan`` command turns it into its own exit statuses. Unlike ``SystemExit``, it is an
``Exception``: code that uses the library can catch it with everything else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class AstroganError(Exception):
    """A problem the user can fix; ``str(error)`` is the one line that says what and how."""


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point's ``main``; an AstroganError becomes its line on stderr and exit status 1."""
    try:
        main()
    except AstroganError as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)

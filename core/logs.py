"""Console logging for the command-line entry points; library modules only call ``logging``.

Every ``main()`` calls :func:`configure_console` once, so a command's progress lines and its
result reach the terminal through the same handler, while Airflow tasks and Lambda handlers keep
the handlers their runtime installs.
"""

from __future__ import annotations

import logging
import sys

CONSOLE_FORMAT = "%(message)s"
VERBOSE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ConsoleHandler(logging.StreamHandler):
    """The handler :func:`configure_console` installs (recognised so it is installed once).

    It writes to whatever ``sys.stdout`` is when a record is emitted, so a redirected or
    replaced stdout (a test's capture, a notebook) is followed rather than a stale stream kept.
    """

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stdout

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure_console(level: int = logging.INFO, verbose: bool = False) -> None:
    """Send log records at ``level`` and above to stdout (idempotent).

    Args:
        level: the root logger's level.
        verbose: prefix every line with time, level and logger name.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _ConsoleHandler)), None)
    if handler is None:
        handler = _ConsoleHandler()
        root.addHandler(handler)
    handler.setFormatter(logging.Formatter(VERBOSE_FORMAT if verbose else CONSOLE_FORMAT))
    root.setLevel(level)

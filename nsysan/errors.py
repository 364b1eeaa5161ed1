"""Errors and warnings nsysan raises for problems with the user's input, and the exit codes they map to.

Standard library only: the command line, the runner and the exporter share these without importing the analyses.
"""
from __future__ import annotations

#: Exit codes of every nsysan command: 0 ok, 1 user error (nothing could be analysed), 2 usage error
#: (click's own), 3 some inputs of a batch failed while others were analysed, 130 interrupted.
EXIT_OK, EXIT_USER_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class NsysanError(Exception):
    """A problem with the user's input; its message is one line naming the file and the problem."""


class NotAnExportError(NsysanError):
    """The file is not a readable nsys SQLite or Parquet export."""


class MissingDataError(NsysanError):
    """The report lacks a table an analysis needs; the message says how to capture it."""


class NsysanWarning(UserWarning):
    """Something an analysis worked around (rows it left out, a version it does not know); one line. The
    many-report functions collect these into their result's ``notes``."""

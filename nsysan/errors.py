"""Errors nsysan raises for problems with the user's input (the CLI prints them as one line)."""
from __future__ import annotations


class NsysanError(Exception):
    """A problem with the user's input; its message is one line naming the file and the problem."""


class NotAnExportError(NsysanError):
    """The file is not a readable nsys SQLite or Parquet export."""


class MissingDataError(NsysanError):
    """The report lacks a table an analysis needs; the message says how to capture it."""

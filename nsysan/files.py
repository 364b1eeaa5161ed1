"""Touching the user's files safely: inputs are only ever read, never waited on, and named in one line.

* :func:`check_regular` refuses what is not a regular file (a FIFO would block a reader for ever, a device
  never ends, a folder is not a file) before anything opens it; :func:`read_head` reads the first bytes
  without ever blocking;
* :func:`reason` turns an :class:`OSError` into a few words (``no such file (a broken link)``,
  ``a symbolic link loop``, ``permission denied``);
* :func:`resolved` resolves a path without failing on symbolic-link loops (``Path.resolve`` raises);
* :func:`sqlite_uri` is the read-only SQLite URI of a path, escaped, so that ``?``, ``#`` or ``%`` in a folder
  or file name neither change the options nor make SQLite create a file of its own;
* :func:`printable` keeps a message on one line whatever the file names in it hold (newlines, tabs, escapes).

Standard library only: the exporter and the experiment runner use it without the analysis packages.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: What a non-regular file is, in words, by its ``stat`` type.
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


class UnreadableFile(Exception):
    """A path cannot be read as a regular file; the message says why in a few words, without the path."""


def reason(error: OSError, path: str | os.PathLike | None = None) -> str:
    """A few words for an OS error on ``path``: what the user can act on, not errno names."""
    code = error.errno
    if code == errno.ENOENT:
        if path is not None and os.path.islink(path):
            return "no such file (a broken link)"
        return "no such file"
    if code == errno.ELOOP:
        return "a symbolic link loop"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.EISDIR:
        return "is a folder, not a file"
    if code == errno.ENOTDIR:
        return "a part of the path is not a folder"
    if code == errno.ENAMETOOLONG:
        return "file name too long"
    return (error.strerror or str(error)).lower() if (error.strerror or str(error)) else type(error).__name__


def kind(mode: int) -> str | None:
    """``a FIFO (named pipe)``, ``a socket``, ...; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path: str | os.PathLike) -> os.stat_result:
    """The ``stat`` of ``path`` (links followed) when it is a regular file; raises :class:`UnreadableFile`
    otherwise: missing, a broken link or a loop, or a FIFO, socket, device or folder."""
    try:
        info = os.stat(path)
    except OSError as e:
        raise UnreadableFile(reason(e, path)) from None
    what = kind(info.st_mode)
    if what is not None:
        raise UnreadableFile(f"{what}, not a regular file")
    return info


def read_head(path: str | os.PathLike, size: int) -> bytes:
    """The first ``size`` bytes of the regular file ``path``. The file is opened without blocking and checked
    again once open, so that a FIFO swapped in after :func:`check_regular` cannot make the read wait."""
    check_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UnreadableFile(f"cannot read: {reason(e, path)}") from None
    try:
        what = kind(os.fstat(fd).st_mode)
        if what is not None:
            raise UnreadableFile(f"{what}, not a regular file")
        chunks, left = [], size
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise UnreadableFile(f"cannot read: {reason(e, path)}") from None
    finally:
        os.close(fd)


def resolved(path: str | os.PathLike) -> Path:
    """``path`` made absolute with every symbolic link resolved, as far as they resolve (a loop or a broken
    link stays as it is instead of raising)."""
    return Path(os.path.realpath(path))


def sqlite_uri(path: str | os.PathLike) -> str:
    """The read-only SQLite URI of ``path``, percent-escaped (``?``, ``#``, ``%`` and the rest are part of the
    name, not of the URI). ``immutable``: SQLite takes no lock and creates no journal, WAL or shared-memory
    file beside it."""
    return Path(os.path.abspath(path)).as_uri() + "?mode=ro&immutable=1"


def printable(text: str) -> str:
    """``text`` on one line: newlines, tabs and other control characters are shown escaped (``\\n``)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


def brief(error: BaseException, limit: int = 200) -> str:
    """The first line of an error's message, shortened to ``limit`` characters (its type when it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return printable(text if len(text) <= limit else text[: limit - 3] + "...")

"""The audit trail: one JSON line per finished generation request.

``audit.path`` is ``-`` for stdout or a file, appended to and created if
missing. A line has exactly the keys the proxy builds::

    ts, request_id, session_id, upstream, protocol, model, stream, status,
    stop_reason, finish_reason, ttft_ms, duration_ms, cancel_ms, usage,
    bytes_out, readers, resumes, client, credential, error

``cancelproxy audit FILE`` (``audit_report.py``) summarises such a file.

Log rotation: logrotate moves the file away and sends the proxy SIGHUP. The
proxy installs a SIGHUP handler (``install_sighup``) that calls
``AuditSink.reopen()``, so the following lines go to a new file at the
original path instead of following the moved one. (``copytruncate`` works
too, without the signal, since the file is opened in append mode.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Mapping
from typing import IO, Any

import orjson

__all__ = ["STDOUT", "AuditSink", "install_sighup"]

STDOUT = "-"

_log = logging.getLogger("cancelproxy.audit")


class AuditSink:
    """Where audit lines go. Not thread-safe: used from the event loop only.

    Writes are small and synchronous on purpose: there is one line per
    finished request (not per token), a buffered append of a few hundred bytes
    plus a flush, which costs less than handing it to a thread would. The
    flush makes each line reach the file whole and at once, so ``tail -f``
    and a crash both see complete lines.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[str] | None = None
        # Set while lines are being dropped, so a full disk logs one error
        # (and one recovery), not one per request.
        self._failing = False

    @property
    def is_stdout(self) -> bool:
        return self.path == STDOUT

    def open(self) -> None:
        """Open the file for appending.

        Raises OSError when the path cannot be opened: a misconfigured audit
        path should stop the start, not silently lose the trail. (After the
        start, ``write`` and ``reopen`` never raise.)
        """
        if self.is_stdout or self._file is not None:
            return
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` as one compact JSON line, flushed. Never raises.

        An OSError (disk full, file removed with its directory, stdout
        closed, ...) is logged and the line dropped: a broken audit trail must
        not fail the request it is about.
        """
        # default=str: an unexpected value type is written as text rather
        # than losing the whole line. orjson (a line per request: a few µs
        # where json takes ~10) escapes control characters, so a line stays
        # one line; the json module takes what orjson refuses (a lone
        # surrogate from an upstream's text), in ASCII.
        try:
            options = orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATETIME
            line = orjson.dumps(entry, default=str, option=options).decode()
        except TypeError:
            try:
                line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
            except (TypeError, ValueError) as exc:  # a non-string key, a cycle: a bug, but not the request's
                _log.error("audit: entry not serialisable, dropped: %s", exc)
                return
        try:
            stream = self._stream()
            stream.write(line)
            stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: write to a closed file
            if not self._failing:
                _log.error("audit: cannot write to %s, dropping lines until it works again: %s", self.path, exc)
                self._failing = True
            # The next write starts from a fresh open rather than a file
            # object in an unknown state (a partial line may sit in its buffer).
            self._discard_file()
            return
        if self._failing:
            _log.warning("audit: writing to %s again", self.path)
            self._failing = False

    def reopen(self) -> None:
        """Close and reopen the file at ``path`` (after logrotate moved it). No-op for stdout.

        Called from a signal handler, so it never raises: if the path cannot
        be opened now, the error is logged and the next ``write`` tries again.
        """
        if self.is_stdout:
            return
        self.close()
        try:
            self.open()
        except OSError as exc:
            _log.error("audit: cannot reopen %s: %s", self.path, exc)

    def close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as exc:  # the final flush of a failing file
            _log.error("audit: closing %s: %s", self.path, exc)
        finally:
            self._file = None

    def _stream(self) -> IO[str]:
        if self.is_stdout:
            # Looked up per line, not kept: whoever owns sys.stdout may replace it.
            return sys.stdout
        if self._file is None:
            self.open()  # a write after a failed reopen retries the open
        assert self._file is not None
        return self._file

    def _discard_file(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
        except (OSError, ValueError):
            pass  # its buffer could not be flushed: that line is the one being dropped
        self._file = None


def install_sighup(loop: asyncio.AbstractEventLoop, sink: AuditSink) -> bool:
    """Make SIGHUP reopen the audit file (logrotate's ``postrotate`` sends it).

    Installed for stdout too, where ``reopen`` does nothing: SIGHUP's default
    action would otherwise end the process. Returns False where that is not possible: no SIGHUP (Windows), a loop
    without signal support, or not the main thread. Undo with
    ``loop.remove_signal_handler(signal.SIGHUP)``.
    """
    sighup = getattr(signal, "SIGHUP", None)
    if sighup is None:
        return False
    try:
        loop.add_signal_handler(sighup, sink.reopen)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True

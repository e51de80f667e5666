"""User-facing errors.

Every error raised because of bad input (a file, a shape, a config key, a name) is an :class:`IrepaError` whose
message is one line naming the offending thing and the fix. The CLI prints ``error: <message>`` and exits with
status 2 for these; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class IrepaError(ValueError):
    """Bad input: the message names the thing and how to fix it."""


class ConfigError(IrepaError):
    """An unknown config key, a value of the wrong type, or an invalid combination of settings."""


class UnknownNameError(IrepaError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(IrepaError, FileNotFoundError):
    """Pretrained weights could not be found locally (and downloading was not allowed or failed)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def first_line(exc: BaseException, *, max_chars: int | None = None) -> str:
    """The first non-empty line of ``str(exc)`` (or the exception's type name when it has no message).

    Third-party exceptions often carry multi-line messages (tracebacks of a worker, long key lists); an
    :class:`IrepaError` that wraps one quotes just this line so that it stays one line.

    Args:
        exc: The exception to quote.
        max_chars: Cut the line to this many characters (None: no limit).
    """
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if max_chars is None else line[:max_chars]

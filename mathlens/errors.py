"""User-facing errors.

Anything a user can cause (bad path, empty corpus, invalid config value, corrupt checkpoint, ...)
raises :class:`MathlensError` with one line that names the problem. The CLI prints that line and
exits with code 2; it never shows a traceback for it.
"""


class MathlensError(ValueError):
    """An error caused by user input; its message is one line naming the problem."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`MathlensError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise MathlensError(message)

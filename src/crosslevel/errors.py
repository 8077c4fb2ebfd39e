"""The one exception type for problems a user can fix (bad path, bad key, bad value)."""


class CrossLevelError(Exception):
    """A user-facing error: the CLI prints its message and exits non-zero, no traceback."""

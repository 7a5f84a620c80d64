"""The user-facing errors: one line each, printed by the CLI without a traceback (exit 2)."""


class ConfigError(ValueError):
    """A config problem, already formatted as one line for the user."""


class DataError(ValueError):
    """A data set that is missing or unreadable, described in one line."""


class CheckpointError(ValueError):
    """A checkpoint that is missing pieces, truncated, corrupt or unsafe to open, described in one line."""


class LockError(ConfigError):
    """A sweep or trial folder another process is using (harness.lock): one line naming the holder."""


class ResultsError(ValueError):
    """A results file written earlier (status.json, a metrics part) that is truncated or corrupt, in one line."""

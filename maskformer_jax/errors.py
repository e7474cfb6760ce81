"""Errors the user fixes, not the code: the commands print their message as one line, `error: ...`,
and exit with status 2 (`maskformer_jax.cli.run`). Both are ValueErrors, so callers of the library
can catch them as before."""


class ConfigError(ValueError):
    """A config value, flag, path or checkpoint that does not fit; the message names it and the fix."""


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names it."""

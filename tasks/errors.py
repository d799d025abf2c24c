"""The one user-facing error type, defined below both packages: `tasks` raises it for bad data and
`pipeline` for bad config (pipeline.config re-exports it), and neither package imports the other's
modules for it. str(error) is the one-line message; the CLI prints it and exits 2."""


class ConfigError(ValueError):
    """A bad config value, key or data file; str(error) is the one-line message shown to the user."""

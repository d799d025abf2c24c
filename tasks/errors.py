"""The one user-facing error type, defined below both packages: `tasks` raises it for bad data and
`pipeline` for bad config (pipeline.config re-exports it), and neither package imports the other's
modules for it. str(error) is the one-line message; the CLI prints it and exits 2."""


class ConfigError(ValueError):
    """A bad config value, key or data file; str(error) is the one-line message shown to the user."""


def closest(value, choices) -> str | None:
    """The choice closest to a mistyped value (the standard library's difflib), or None."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.8)
    return close[0] if close else None


def did_you_mean(value, choices) -> str:
    """" did you mean 'x'?" naming the closest of `choices` to a mistyped `value`, or "" when none
    is close: the hint every unknown key, name and choice gives."""
    match = closest(value, choices)
    return f" did you mean {match!r}?" if match else ""


def unknown_choice(key: str, what: str, value, allowed) -> str:
    """The one-line message of a value outside its allowed set: the key, the value, the closest
    allowed one and every allowed one."""
    allowed = [str(a) for a in allowed]
    return f"{key}: unknown {what} {value!r};{did_you_mean(value, allowed)} allowed: {', '.join(allowed)}"

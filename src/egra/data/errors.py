"""The data layer's user error, importable without numpy (the config check imports it)."""


class DataError(ValueError):
    """Malformed input data; the message names the file, the place and what was expected."""

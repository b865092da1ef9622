"""Errors of the pure core.

    TelemeterError
    ├── InvalidPayload      bad data: the server answers 400 with the reason
    │   └── TooLarge        a size or count limit was exceeded: the server answers 413
    └── InvalidSelector     a whitelist/match selector that does not parse

Core code raises only these; the server translates them to its own errors in one place
(``app.errors.http_error``).
"""


class TelemeterError(Exception):
    """Root of every error raised by the ``telemeter`` package."""


class InvalidPayload(TelemeterError):
    """The payload (compressed stream, protobuf or a metric in it) is malformed or unsafe."""


class TooLarge(InvalidPayload):
    """A size or count limit (bytes, decompressed bytes, series, labels) was exceeded."""


class InvalidSelector(TelemeterError):
    """A PromQL series selector could not be parsed."""

"""Errors of the telemeter client.

    TelemeterError
    └── ClientError
        ├── ConfigError         bad flags or an unreadable token/salt/match file: refused at
        │                       start-up, the old configuration kept on reload
        └── ForwardError        one push cycle failed (scrape, token exchange or upload)
            ├── ScrapeError     the source Prometheus failed or answered something unusable
            ├── AuthorizeError  the token exchange at ``/authorize`` failed
            └── UploadError     the server refused or failed the upload

Network errors are translated into these in :mod:`client.forwarder` and nowhere else.
The worker loop decides from a ForwardError alone how long to wait before the next attempt.
"""

from __future__ import annotations

from telemeter.errors import TelemeterError


class ClientError(TelemeterError):
    """Root of the client's errors."""


class ConfigError(ClientError):
    """Flags that cannot work together, or a file named by a flag that cannot be read."""


class ForwardError(ClientError):
    """A push cycle failed.

    ``status`` is the HTTP status when there was an answer; ``retry_after`` the seconds the answer
    asked us to wait (429/503 ``Retry-After``); ``payload_rejected`` is set when the server refused
    this payload as such (400/413): sending the same data again cannot succeed.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        payload_rejected: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.payload_rejected = payload_rejected


class ScrapeError(ForwardError):
    """The source Prometheus could not be read (network, status, size limit, bad content)."""


class AuthorizeError(ForwardError):
    """The long-lived token could not be exchanged for an upload token."""


class UploadError(ForwardError):
    """The server did not accept the upload."""

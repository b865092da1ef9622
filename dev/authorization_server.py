"""A stand-in for the upstream authorization service ("tollbooth"), for tests and local stacks.

    telemeter-authorization-server <listen-addr> <tokens.json>

It behaves like the Go ``authorization-server`` (docs/protocol.md section 2): the tokens file is
``[{"token": "a"}, ...]``; on any path it answers non-POST 405, a Content-Type other than exactly
``application/json`` 400, an unparsable body 400, an empty ``cluster_id`` 400, an unknown token
401, the first request of a (token, cluster) pair 201 and repeats 200, with the body
``{"cluster_id": .., "authorization_token": .., "account_id": <stable hash of cluster_id>}``.
Errors carry ``{"name": .., "reason": ..}`` like Go's.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.authorizer import stable_account_id
from telemeter.addresses import parse_listen_address

__all__ = ["create_app", "load_tokens", "main"]

logger = logging.getLogger(__name__)

# Every method is routed to the handler so that non-POST requests get Go's JSON 405.
_METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _json_response(status_code: int, body: Any) -> Response:
    # Go's stand-in writes indented JSON with exactly "Content-Type: application/json".
    return Response(
        content=json.dumps(body, indent=2), status_code=status_code, media_type="application/json"
    )


def _error(status_code: int, name: str, reason: str) -> Response:
    return _json_response(status_code, {"name": name, "reason": reason})


def create_app(tokens: Iterable[str]) -> Starlette:
    """Return the stand-in as an ASGI app accepting the given long-lived tokens."""
    known_tokens = frozenset(tokens)
    # (token, cluster id) pairs already registered: the first request answers 201, repeats 200.
    registered: dict[tuple[str, str], dict[str, str]] = {}

    async def register(request: Request) -> Response:
        if request.method != "POST":
            return _error(405, "MethodNotAllowed", "Only requests of type 'POST' are accepted.")
        if request.headers.get("content-type") != "application/json":
            return _error(
                400,
                "InvalidContentType",
                "Only requests with Content-Type application/json are accepted.",
            )
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            return _error(400, "InvalidBody", f"Unable to parse body as JSON: {exc}")
        # Go decodes into a struct of strings: null is an empty request, other shapes fail.
        if body is None:
            body = {}
        cluster_id = body.get("cluster_id", "") if isinstance(body, dict) else None
        token = body.get("authorization_token", "") if isinstance(body, dict) else None
        if not isinstance(cluster_id, str) or not isinstance(token, str):
            return _error(400, "InvalidBody", "Unable to parse body as JSON: wrong field types.")
        if not cluster_id:
            return _error(400, "BadRequest", "No cluster ID provided.")
        if token not in known_tokens:
            return _error(401, "NotAuthorized", "The provided token is not recognized.")

        key = (token, cluster_id)
        answer = registered.get(key)
        if answer is not None:
            return _json_response(200, answer)
        answer = {
            "cluster_id": cluster_id,
            "authorization_token": token,
            "account_id": stable_account_id(cluster_id),
        }
        registered[key] = answer
        logger.info("registered cluster_id=%s account_id=%s", cluster_id, answer["account_id"])
        return _json_response(201, answer)

    return Starlette(routes=[Route("/{path:path}", register, methods=_METHODS)])


def load_tokens(path: Path) -> list[str]:
    """Read a tokens file ``[{"token": "..."}, ...]``; raise ValueError when it is malformed."""
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read tokens file {path}: {exc}") from exc
    if not isinstance(entries, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("token"), str) for entry in entries
    ):
        raise ValueError(f'tokens file {path} must be a JSON list of {{"token": "<string>"}}')
    return [entry["token"] for entry in entries]


def main(argv: Sequence[str] | None = None) -> None:
    """Run the stand-in until interrupted."""
    parser = argparse.ArgumentParser(
        prog="telemeter-authorization-server",
        description="Stand-in for the upstream authorization service (tests and local stacks).",
    )
    parser.add_argument("listen_address", help="where to listen, e.g. 127.0.0.1:9001 or :9001")
    parser.add_argument("tokens_file", type=Path, help='JSON file: [{"token": "..."}, ...]')
    args = parser.parse_args(argv)
    try:
        host, port = parse_listen_address(args.listen_address)
        tokens = load_tokens(args.tokens_file)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logger.info("authorization stand-in listening address=%s:%d tokens=%d", host, port, len(tokens))
    uvicorn.run(create_app(tokens), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()

"""The local API protocol, sans-IO: message shapes, error codes and who may connect.

The daemon serves JSON over WebSocket at ``ws://127.0.0.1:PORT/v1``. This module
decides everything about a connection and a message that does not need a socket:
whether a handshake is authorised, what a text frame asks for, and the exact
bytes of replies, errors and events. ``lannode.net.api_server`` does the I/O.

Messages (all JSON objects, one per text frame):

* request ``{"id": 7, "method": "node.status", "params": {}}`` — ``id`` is an
  integer or string chosen by the client, ``params`` an object (optional);
* reply ``{"id": 7, "result": {...}}``;
* error ``{"id": 7, "error": {"code": "unknown_method", "message": "..."}}``
  (``id`` is null when the request could not be read far enough to find it);
* event ``{"event": "plugin.state", "data": {...}}``, sent only for topics the
  connection subscribed to; the first message of every connection is the
  ``hello`` event, which carries the API version.

Authorisation. A client that sends no ``Origin`` header (the CLI, plugins) must
present the node's token, from ``api.json``. A browser always sends ``Origin``;
it is let in only from an origin a running UI plugin registered, and only with
that origin's own token, ``origin_token(token, origin)``, so a token lifted from
one page is worthless to any other origin. The token is presented as
``Authorization: Bearer TOKEN`` or, since browsers cannot set headers on a
WebSocket, as the subprotocol ``lannode.token.TOKEN`` beside ``lannode.v1``.

This module must never do I/O, read the clock or import trio.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Protocol, Sequence, TypeVar

API_VERSION = 1
API_PATH = f"/v{API_VERSION}"
SUBPROTOCOL = f"lannode.v{API_VERSION}"
TOKEN_SUBPROTOCOL_PREFIX = "lannode.token."
MAX_ID_LENGTH = 64
MAX_METHOD_LENGTH = 64


class ErrorCode:
    """The codes an error reply may carry; clients match on these, not on messages."""

    BAD_JSON = "bad_json"  # the frame is not a JSON object
    BAD_REQUEST = "bad_request"  # JSON, but not a request (no method, bad id, ...)
    UNKNOWN_METHOD = "unknown_method"
    BAD_PARAMS = "bad_params"  # the method exists; its params are wrong
    FORBIDDEN = "forbidden"  # this connection may not call this method
    NOT_FOUND = "not_found"  # the thing named does not exist
    UNAVAILABLE = "unavailable"  # the node cannot do it now (shutting down, ...)
    INTERNAL = "internal"  # a bug on our side; logged with a traceback


ALL_ERROR_CODES = tuple(v for k, v in vars(ErrorCode).items() if k.isupper())


class ApiError(Exception):
    """An error reply: raised by handlers and the parser, sent to the client."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    id: int | str
    method: str
    params: dict[str, Any] = field(default_factory=dict)


def parse_request(frame: str | bytes) -> Request:
    """Read one text frame as a request, or raise ApiError saying what is wrong."""
    if isinstance(frame, bytes):
        raise ApiError(ErrorCode.BAD_JSON, "binary frames are not part of the API; send JSON text")
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        raise ApiError(ErrorCode.BAD_JSON, f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ApiError(ErrorCode.BAD_JSON, "a request must be a JSON object")
    request_id = message.get("id")
    valid_int = isinstance(request_id, int) and not isinstance(request_id, bool)
    valid_str = isinstance(request_id, str) and 0 < len(request_id) <= MAX_ID_LENGTH
    if not (valid_int or valid_str):
        raise ApiError(ErrorCode.BAD_REQUEST, f'"id" must be an integer or a string of 1..{MAX_ID_LENGTH} characters')
    method = message.get("method")
    if not isinstance(method, str) or not 0 < len(method) <= MAX_METHOD_LENGTH:
        raise ApiError(ErrorCode.BAD_REQUEST, '"method" must be a non-empty string', request_id)
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise ApiError(ErrorCode.BAD_REQUEST, '"params" must be an object', request_id)
    unknown = set(message) - {"id", "method", "params"}
    if unknown:
        raise ApiError(ErrorCode.BAD_REQUEST, f"unknown fields: {', '.join(sorted(unknown))}", request_id)
    assert isinstance(request_id, (int, str))
    return Request(request_id, method, params)


def encode(message: dict[str, Any]) -> str:
    # ASCII with \u escapes: a lone surrogate a client smuggled in through a JSON
    # escape still encodes, where raw UTF-8 would fail the send.
    return json.dumps(message, separators=(",", ":"))


def reply(request_id: int | str, result: Any) -> str:
    return encode({"id": request_id, "result": result})


def error(request_id: Any, code: str, message: str) -> str:
    return encode({"id": request_id, "error": {"code": code, "message": message}})


def event(topic: str, data: Any) -> str:
    return encode({"event": topic, "data": data})


MAX_TOPIC_PATTERN = 300


def topic_matches(pattern: str, topic: str) -> bool:
    """A pattern is a topic, or a prefix ending in ``*``: ``*`` matches everything,
    ``plugin.*`` every topic under ``plugin.``, ``store:groups/*`` every store key
    under ``groups/``."""
    if pattern == topic:
        return True
    return pattern.endswith("*") and topic.startswith(pattern[:-1])


def origin_token(token: str, origin: str) -> str:
    """The token a page from ``origin`` uses: useless from any other origin."""
    return hmac.new(token.encode(), f"lannode-origin:{origin}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is on the other end of an accepted connection."""

    origin: str | None  # None: a local program holding the node token
    connection: int = 0  # which API connection (the server numbers them from 1)

    @property
    def is_local(self) -> bool:
        return self.origin is None


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    reason: str


def presented_tokens(headers: Iterable[tuple[bytes, bytes]], subprotocols: Iterable[str]) -> list[str]:
    tokens = []
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                tokens.append(credential.strip())
    tokens += [p[len(TOKEN_SUBPROTOCOL_PREFIX) :] for p in subprotocols if p.startswith(TOKEN_SUBPROTOCOL_PREFIX)]
    return tokens


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def authorize(
    *,
    path: str,
    headers: Iterable[tuple[bytes, bytes]],
    subprotocols: Iterable[str],
    token: str,
    ui_origins: Iterable[str],
) -> Principal | Rejection:
    """Decide a handshake: a Principal to accept, or a Rejection with its HTTP status."""
    headers = list(headers)
    base_path = path.split("?", 1)[0]
    if base_path != API_PATH:
        return Rejection(404, f"unknown API path {base_path!r}; this node speaks {API_PATH}")
    origin = header(headers, b"origin")
    tokens = presented_tokens(headers, subprotocols)
    if not tokens:
        return Rejection(401, "missing token: send 'Authorization: Bearer TOKEN' (token from api.json)")
    if origin is None:
        if any(_same_token(t, token) for t in tokens):
            return Principal(None)
        return Rejection(401, "wrong token")
    if origin not in set(ui_origins):
        return Rejection(403, f"origin {origin!r} is not this node's web UI")
    expected = origin_token(token, origin)
    if any(_same_token(t, expected) for t in tokens):
        return Principal(origin)
    return Rejection(401, "wrong token for this origin")


def _same_token(presented: str, expected: str) -> bool:
    """A constant-time compare of what a client sent, which may be any text (compare_digest
    takes str only when it is ASCII, and raises otherwise)."""
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected.encode())


def hello(node_id: str, name: str, version: str) -> str:
    return event("hello", {"api": API_VERSION, "node_id": node_id, "name": name, "version": version})


# -- naming things: a peer, a group, a file, a transfer ---------------------------------------
MIN_ID_PREFIX = 4  # characters of an id that may name it, when no other id starts so
T = TypeVar("T")


def resolve(
    text: str,
    items: Sequence[T],
    *,
    id_of: Callable[[T], str],
    name_of: Callable[[T], str | None] | None,
    what: str,
    what_plural: str,
    not_found: str,
) -> T:
    """The one item ``text`` names: its whole id, else its name (if unique), else a unique
    prefix of ``MIN_ID_PREFIX`` or more characters of its id. ApiError otherwise, naming
    the candidates when there are several; ``not_found`` is the whole message for none."""
    lowered = text.lower()
    exact = [x for x in items if id_of(x) == lowered]
    if exact:
        return exact[0]
    for candidates in (
        [x for x in items if name_of is not None and name_of(x) == text],
        [x for x in items if len(text) >= MIN_ID_PREFIX and id_of(x).startswith(lowered)],
    ):
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            ids = ", ".join(id_of(x)[:12] for x in candidates[:8])
            raise ApiError(ErrorCode.BAD_PARAMS, f"{len(candidates)} {what_plural} match {text!r} ({ids}); give more of the {what}'s id")
    raise ApiError(ErrorCode.NOT_FOUND, not_found)


# -- what a service registers ------------------------------------------------------------------
Handler = Callable[[dict[str, Any], "Principal"], Awaitable[Any]]


class Methods(Protocol):
    """Where a service registers its API methods (the API server is one; services need
    nothing else of the transport)."""

    on_disconnect: list[Callable[[int], None]]  # told a connection's number when it closes

    def method(self, name: str, handler: Handler | None, doc: str, *, local_only: bool = False) -> None: ...

    def subscription(self, name: str, doc: str, topics_from: Callable[[dict[str, Any]], list[str]], *, unsubscribe: bool = False) -> None: ...


class ByteMethods(Methods, Protocol):
    """Methods, and the two ways a page hands a file's bytes to the node: binary
    WebSocket messages, handled in order on the reading task (their backpressure),
    and ``PUT API_PATH/uploads/ID`` (caller, upload id, offset, body chunks), which
    answers with the upload's record. Only uploads take them."""

    binary_handler: Callable[[Principal, bytes], Awaitable[None]] | None
    http_upload: Callable[[Principal, str, int, AsyncIterator[bytes]], Awaitable[Any]] | None


def require(params: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    """A handler's check of one parameter; raises a bad_params error naming it."""
    if name not in params:
        if optional:
            return None
        raise ApiError(ErrorCode.BAD_PARAMS, f'missing parameter "{name}"')
    value = params[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ApiError(ErrorCode.BAD_PARAMS, f'parameter "{name}" has the wrong type')
    return value

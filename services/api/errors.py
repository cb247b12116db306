"""The API's errors: each carries the HTTP status the client is told (an integer
``extensions.code``, ``reference/mapi.md`` section 2.1)."""

from __future__ import annotations

from http import HTTPStatus


class ApiError(Exception):
    code: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    code = HTTPStatus.BAD_REQUEST


class Unauthorized(ApiError):
    code = HTTPStatus.UNAUTHORIZED


class TooLarge(ApiError):
    code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Forbidden(ApiError):
    code = HTTPStatus.FORBIDDEN


class NotFound(ApiError):
    code = HTTPStatus.NOT_FOUND


class Conflict(ApiError):
    code = HTTPStatus.CONFLICT


class Unavailable(ApiError):
    """Busy now, fine later: the one code here a client retries."""

    code = HTTPStatus.SERVICE_UNAVAILABLE


class NotSetUp(ApiError):
    """A feature this server's operator has not set up (secrets without a keyring)."""

    code = HTTPStatus.NOT_IMPLEMENTED

"""Refusals of the server, raised as exceptions of their status."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import httpx


class WeirError(Exception):
    """The server refused a request; `problem` is its problem document
    (RFC 9457): `code`, `detail`, and `errors` with each field's path."""

    status: int
    code: str
    detail: str
    errors: List[Dict[str, str]]
    problem: Dict[str, Any]

    def __init__(self, status: int, problem: Dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code = str(problem.get("code", ""))
        self.detail = str(problem.get("detail", ""))
        self.errors = list(problem.get("errors") or [])
        where = "".join(f"\n  {e.get('path', '')}: {e.get('message', '')}" for e in self.errors)
        super().__init__(f"{status} {self.code}: {self.detail}{where}")

    @property
    def line(self) -> Optional[int]:
        """The script line of a refused SQL draft."""
        return self.problem.get("line")

    @staticmethod
    def of(response: httpx.Response) -> "WeirError":
        """The exception of a refused answer."""
        try:
            problem = response.json()
            if not isinstance(problem, dict):
                raise ValueError
        except ValueError:
            problem = {"code": "http_error", "detail": response.text[:500]}
        status = response.status_code
        kind = _BY_STATUS.get(status, ServerError if status >= 500 else WeirError)
        return kind(status, problem)


class BadRequest(WeirError):
    """400: the request is malformed."""


class Unauthorized(WeirError):
    """401: no key, or a key that is not valid."""


class Forbidden(WeirError):
    """403: the key's role or connector limits do not allow this."""


class NotFound(WeirError):
    """404: no such resource (or another workspace's)."""


class Conflict(WeirError):
    """409: the resource's state does not allow this now."""


class ValidationError(WeirError):
    """422: the request is well formed but invalid; `errors` names each
    field."""


class ServerError(WeirError):
    """5xx: the server could not do it (`database_unavailable`, …)."""


_BY_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: ValidationError,
}

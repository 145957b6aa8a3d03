"""A typed client of the Weir HTTP API (`/api/v1`).

    from weir_client import Client

    weir = Client("http://127.0.0.1:8080/api/v1", key="weir_…")
    run = weir.trigger("contacts_import", "contacts.csv", wait=True)
    print(run["status"], run["step_progress"])
    for contact in weir.records("contact", city="Oslo"):
        print(contact["email"])

Every method names the operation of the OpenAPI document it calls
(`OPERATIONS`); `check_openapi.py` fails when the two drift apart. A
refusal of the server is raised as a `WeirError` of its status
(`NotFound`, `ValidationError`, …) carrying the problem document.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Union

import httpx

from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    ServerError,
    Unauthorized,
    ValidationError,
    WeirError,
)
from .models import Connector, Execution, FileInfo, LogLine, Notification, Page

__all__ = [
    "Client",
    "WeirError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "Conflict",
    "ValidationError",
    "ServerError",
    "Execution",
    "Connector",
    "FileInfo",
    "LogLine",
    "Notification",
    "OPERATIONS",
    "ENDED",
]

#: The statuses an execution ends with.
ENDED = frozenset({"success", "partial_success", "failed", "canceled"})

#: Each method of `Client` and the API operation (method, path) it calls.
OPERATIONS: Dict[str, tuple] = {
    "connectors": ("get", "/connectors"),
    "connector": ("get", "/connectors/{connector}"),
    "upload": ("post", "/files"),
    "trigger": ("post", "/connectors/{connector}/runs"),
    "executions": ("get", "/connectors/{connector}/executions"),
    "execution": ("get", "/executions/{id}"),
    "watch": ("get", "/executions/{id}/events"),
    "logs": ("get", "/executions/{id}/logs"),
    "cancel": ("post", "/executions/{id}/cancel"),
    "notifications": ("get", "/executions/{id}/notifications"),
    "records": ("get", "/objects/{object}/records"),
}

FileLike = Union[str, os.PathLike, bytes, IO[bytes]]


class Client:
    """A Weir server and the API key it is called with.

    `server` and `key` default to the `WEIR_SERVER` and `WEIR_KEY`
    environment variables, as the `weir` command line reads them.
    """

    def __init__(
        self,
        server: Optional[str] = None,
        key: Optional[str] = None,
        *,
        timeout: float = 60.0,
        transport: Optional[httpx.BaseTransport] = None,
    ) -> None:
        server = server or os.environ.get("WEIR_SERVER", "http://127.0.0.1:8080/api/v1")
        key = key or os.environ.get("WEIR_KEY")
        if not key:
            raise ValueError("an API key is needed: pass key= or set WEIR_KEY")
        self._http = httpx.Client(
            base_url=server.rstrip("/"),
            headers={"Authorization": f"Bearer {key}", "User-Agent": "weir-client-python/0.1"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        """Closes the connections."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- calls ----------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise WeirError.of(response)
        if not response.content:
            return None
        return response.json()

    # -- connectors -----------------------------------------------------

    def connectors(self) -> List[Connector]:
        """The connectors the key reaches."""
        return self._call("GET", "/connectors", params={"limit": 500})["data"]

    def connector(self, connector: str) -> Connector:
        """A connector (id or api_name): its definition and SQL versions."""
        return self._call("GET", f"/connectors/{connector}")

    # -- files and runs -------------------------------------------------

    def upload(self, file: FileLike, filename: Optional[str] = None) -> FileInfo:
        """Uploads a file (a path, bytes or a binary file object)."""
        name, body = _body(file, filename)
        return self._call("POST", "/files", params={"filename": name}, content=body)

    def trigger(
        self,
        connector: str,
        file: Optional[FileLike] = None,
        *,
        source_file_id: Optional[str] = None,
        filename: Optional[str] = None,
        dry_run: bool = False,
        parameters: Optional[Dict[str, Any]] = None,
        idempotency_key: Optional[str] = None,
        wait: bool = False,
        timeout: Optional[float] = None,
        on_change: Optional[Callable[[Execution], None]] = None,
    ) -> Execution:
        """Runs a connector's live script on `file` (uploaded) or on a file
        the server has (`source_file_id`); with `wait=True`, follows the
        run to its end and returns it as it ended."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        params: Dict[str, Any] = {"dry_run": "true"} if dry_run else {}
        path = f"/connectors/{connector}/runs"
        if file is not None:
            name, body = _body(file, filename)
            params["filename"] = name
            if parameters:
                params["parameters"] = json.dumps(parameters)
            doc = self._call("POST", path, params=params, headers=headers, content=body)
        elif source_file_id is not None:
            payload = {"source_file_id": source_file_id, "parameters": parameters or {}}
            doc = self._call("POST", path, params=params, headers=headers, json=payload)
        else:
            raise ValueError("give the file to run on, or source_file_id")
        return self.watch(doc["id"], timeout=timeout, on_change=on_change) if wait else doc

    def execution(self, execution: Union[str, Execution]) -> Execution:
        """An execution as it is now."""
        return self._call("GET", f"/executions/{_id(execution)}")

    def executions(self, connector: str, *, status: Optional[str] = None, limit: int = 50) -> List[Execution]:
        """A connector's executions, newest first."""
        params: Dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self._call("GET", f"/connectors/{connector}/executions", params=params)["data"]

    def watch(
        self,
        execution: Union[str, Execution],
        *,
        timeout: Optional[float] = None,
        on_change: Optional[Callable[[Execution], None]] = None,
    ) -> Execution:
        """Follows an execution over its event stream until it ends (resuming
        when the stream drops); calls `on_change` with each new document;
        returns the execution as it ended."""
        ex = _id(execution)
        deadline = None if timeout is None else time.monotonic() + timeout
        last = ""
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = last
            remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
            try:
                with self._http.stream(
                    "GET", f"/executions/{ex}/events", headers=headers, timeout=httpx.Timeout(remaining)
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise WeirError.of(response)
                    event, data = "", []
                    for line in response.iter_lines():
                        if line == "":
                            if event == "end":
                                return self.execution(ex)
                            if event == "execution" and on_change is not None:
                                on_change(json.loads("\n".join(data)))
                            event, data = "", []
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].lstrip())
                        elif line.startswith("id:"):
                            last = line[3:].strip()
            except httpx.TransportError:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"execution {ex} did not end within {timeout} s")
            time.sleep(0.25)

    def logs(self, execution: Union[str, Execution]) -> List[LogLine]:
        """Every log line of an execution, oldest first."""
        lines: List[LogLine] = []
        cursor: Optional[str] = None
        while True:
            params: Dict[str, Any] = {"limit": 500}
            if cursor:
                params["cursor"] = cursor
            page: Page = self._call("GET", f"/executions/{_id(execution)}/logs", params=params)
            lines.extend(page["data"])
            cursor = page["next_cursor"]
            if not cursor:
                return lines

    def cancel(self, execution: Union[str, Execution]) -> Execution:
        """Cancels an execution: `canceling`, or `canceled` when it was queued."""
        return self._call("POST", f"/executions/{_id(execution)}/cancel")

    def notifications(self, execution: Union[str, Execution]) -> List[Notification]:
        """The notifications of an execution's end, with their attempts."""
        return self._call("GET", f"/executions/{_id(execution)}/notifications")["data"]

    # -- records --------------------------------------------------------

    def records(self, object: str, *, limit: Optional[int] = None, **filters: Any) -> Iterator[Dict[str, Any]]:
        """The records of `object`, newest first, whose fields equal
        `filters` (`city="Oslo"`); pages through them as they are read, up
        to `limit` when given."""
        cursor: Optional[str] = None
        given = 0
        while True:
            params: Dict[str, Any] = {k: _text(v) for k, v in filters.items()}
            params["limit"] = 500 if limit is None else min(500, max(1, limit - given))
            if cursor:
                params["cursor"] = cursor
            page: Page = self._call("GET", f"/objects/{object}/records", params=params)
            for record in page["data"]:
                yield record
                given += 1
                if limit is not None and given >= limit:
                    return
            cursor = page["next_cursor"]
            if not cursor:
                return


def _id(execution: Union[str, Execution]) -> str:
    return execution if isinstance(execution, str) else execution["id"]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _body(file: FileLike, filename: Optional[str]) -> tuple:
    """The name and the bytes (or file object, streamed) of an upload."""
    if isinstance(file, (bytes, bytearray)):
        return filename or "upload", bytes(file)
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        return filename or path.name, path.read_bytes()
    return filename or Path(getattr(file, "name", "upload")).name, file.read()

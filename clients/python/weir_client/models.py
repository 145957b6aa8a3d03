"""The API's documents as typed dictionaries. Each names the schema of the
OpenAPI document it is (`SCHEMA`), and `check_openapi.py` checks that its
keys are that schema's properties."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict


class ConnectorRef(TypedDict, total=False):
    id: Optional[str]
    api_name: str
    version: Optional[int]


class ExecutionError(TypedDict, total=False):
    stage: str
    code: str
    message: str
    line: Optional[int]
    column: Optional[int]
    plugin: Optional[str]


class Execution(TypedDict, total=False):
    """An execution: status, stages with their counts, error, links."""

    id: str
    connector: ConnectorRef
    status: str
    trigger_type: str
    is_dry_run: bool
    source_file_id: Optional[str]
    triggered_by: Optional[Dict[str, str]]
    parameters: Dict[str, Any]
    window_start: Optional[str]
    window_end: Optional[str]
    created_at: str
    started_at: Optional[str]
    ended_at: Optional[str]
    queue_position: Optional[int]
    error: Optional[ExecutionError]
    step_progress: List[Dict[str, Any]]
    links: Dict[str, str]


class Connector(TypedDict, total=False):
    """A connector as the API shows it: its definition and its SQL versions."""

    id: str
    api_name: str
    name: str
    description: Optional[str]
    type: str
    status: str
    input: Dict[str, Any]
    sql: Dict[str, Any]
    parameters: Dict[str, Any]
    limits: Dict[str, Any]
    webhook: Optional[Dict[str, Any]]
    schedule: Optional[Dict[str, Any]]
    transforms: List[Dict[str, Any]]
    variables: List[Dict[str, Any]]
    loads: List[Dict[str, Any]]
    sources: List[Dict[str, Any]]
    notifications: List[Dict[str, Any]]
    sample_file_id: Optional[str]
    live_version: Optional[int]
    draft_version: int
    created_at: str
    updated_at: str
    warnings: List[Dict[str, str]]


class FileInfo(TypedDict, total=False):
    """An uploaded file."""

    id: str
    sha256: str
    size: int
    name: str
    content_type: str
    created_at: str


class LogLine(TypedDict, total=False):
    seq: int
    at: str
    level: str
    message: str


class Attempt(TypedDict, total=False):
    attempt: int
    at: str
    status: Optional[int]
    error: Optional[str]
    took_ms: int


class Notification(TypedDict, total=False):
    n: int
    url: str
    webhook_id: str
    state: str
    created_at: str
    next_attempt_at: Optional[str]
    attempts: List[Attempt]


class Page(TypedDict):
    data: List[Any]
    next_cursor: Optional[str]


#: Each model and the schema of the OpenAPI document it mirrors.
SCHEMAS = {
    "Execution": Execution,
    "ConnectorRef": ConnectorRef,
    "ExecutionError": ExecutionError,
    "ConnectorView": Connector,
    "FileView": FileInfo,
    "LogView": LogLine,
    "AttemptView": Attempt,
    "NotificationView": Notification,
}

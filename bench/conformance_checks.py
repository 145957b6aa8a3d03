"""A schemathesis check of Weir's own (loaded through SCHEMATHESIS_HOOKS by
`conformance.py`): every error answer is an RFC 9457 problem document."""

from __future__ import annotations

import json

import schemathesis

FIELDS = ("type", "title", "status", "detail", "code")


@schemathesis.check
def errors_are_problem_json(ctx, response, case):
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith("application/problem+json"):
        raise AssertionError(f"a {response.status_code} answered as {content_type!r}, not application/problem+json")
    try:
        doc = json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"a {response.status_code} problem document is not JSON: {e}") from None
    missing = [f for f in FIELDS if f not in doc]
    if missing:
        raise AssertionError(f"a {response.status_code} problem document lacks {missing}: {doc}")
    if doc["status"] != response.status_code:
        raise AssertionError(f"a {response.status_code} problem document says status {doc['status']}")
    return None

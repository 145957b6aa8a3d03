#!/usr/bin/env python3
"""Fails when this client and a server's OpenAPI document drift apart:
every operation the client calls (`weir_client.OPERATIONS`) must be in the
document with its method, and every model (`weir_client.models.SCHEMAS`)
must have exactly the properties of its schema.

    python3 check_openapi.py http://127.0.0.1:8080/api/v1/openapi.json
    python3 check_openapi.py openapi.json
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any, Dict, Set

sys.path.insert(0, str(Path(__file__).resolve().parent))

from weir_client import OPERATIONS  # noqa: E402
from weir_client.models import SCHEMAS  # noqa: E402


def load(where: str) -> Dict[str, Any]:
    if where.startswith(("http://", "https://")):
        with urllib.request.urlopen(where, timeout=30) as response:
            return json.load(response)
    return json.loads(Path(where).read_text())


def properties(doc: Dict[str, Any], schema: Dict[str, Any]) -> Set[str]:
    """The property names of `schema`, through `$ref`, `allOf` and the
    nullable `oneOf` forms."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return properties(doc, doc["components"]["schemas"][name])
    found = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        found |= properties(doc, part)
    return found


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    doc = load(sys.argv[1])
    problems = []
    paths = doc.get("paths", {})
    for method_name, (method, path) in OPERATIONS.items():
        full = "/api/v1" + path
        if method not in paths.get(full, {}):
            problems.append(f"Client.{method_name} calls {method.upper()} {full}, which the document does not have")
    schemas = doc.get("components", {}).get("schemas", {})
    for name, model in SCHEMAS.items():
        if name not in schemas:
            problems.append(f"models: schema {name} is not in the document")
            continue
        theirs = properties(doc, schemas[name])
        ours = set(model.__annotations__)
        for missing in sorted(theirs - ours):
            problems.append(f"models.{model.__name__} lacks `{missing}` of schema {name}")
        for extra in sorted(ours - theirs):
            problems.append(f"models.{model.__name__} has `{extra}`, which schema {name} does not")
    if problems:
        print("the client and the OpenAPI document differ:")
        for p in problems:
            print(f"  {p}")
        return 1
    print(f"the client matches the document: {len(OPERATIONS)} operations, {len(SCHEMAS)} models")
    return 0


if __name__ == "__main__":
    sys.exit(main())

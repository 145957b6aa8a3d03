"""The client against a live `weir serve` (host/tests/python_client.rs starts
one): `WEIR_SERVER` and `WEIR_KEY` name it; it has the `people` importer
(loading `email,city` into `contact`) and the long-running `slow`."""

from __future__ import annotations

import os
import uuid

import pytest

from weir_client import Client, NotFound, ValidationError, WeirError


@pytest.fixture()
def weir():
    with Client(os.environ["WEIR_SERVER"], os.environ["WEIR_KEY"]) as client:
        yield client


def test_an_upload_runs_with_wait_and_its_records_are_read(weir, tmp_path):
    city = f"city-{uuid.uuid4().hex[:8]}"
    csv = tmp_path / "people.csv"
    csv.write_text(f"email,city\nann-{city}@x.io,{city}\nbob-{city}@x.io,{city}\nnot-an-email,{city}\n")
    seen = []
    run = weir.trigger("people", csv, wait=True, on_change=lambda doc: seen.append(doc["status"]))
    assert run["status"] == "partial_success"
    loads = next(p for p in run["step_progress"] if p["stage"] == "load")
    assert loads["steps"][0]["created"] == 2
    assert seen, "the run's changes were followed"
    found = list(weir.records("contact", city=city))
    assert sorted(r["email"] for r in found) == [f"ann-{city}@x.io", f"bob-{city}@x.io"]
    assert len(list(weir.records("contact", city=city, limit=1))) == 1

    # The same file again, uploaded first, then run by its id.
    stored = weir.upload(csv)
    again = weir.trigger("people", source_file_id=stored["id"], dry_run=True, wait=True)
    assert again["is_dry_run"] is True
    assert again["source_file_id"] == stored["id"]
    assert any("status: partial_success" in line["message"] for line in weir.logs(again))
    assert again["id"] in [e["id"] for e in weir.executions("people")]


def test_an_idempotency_key_makes_one_run(weir):
    key = f"import-{uuid.uuid4()}"
    first = weir.trigger("people", b"email,city\nk@x.io,Rome\n", filename="k.csv", idempotency_key=key)
    second = weir.trigger("people", b"email,city\nk@x.io,Rome\n", filename="k.csv", idempotency_key=key)
    assert first["id"] == second["id"]
    assert weir.watch(first)["status"] == "success"


def test_a_long_run_is_canceled(weir):
    run = weir.trigger("slow", b"a\n1\n", filename="slow.csv")
    asked = weir.cancel(run)
    assert asked["status"] in ("canceled", "canceling")
    assert weir.watch(run, timeout=60)["status"] == "canceled"


def test_refusals_are_typed_errors(weir):
    with pytest.raises(NotFound) as missing:
        weir.execution("no-such-execution")
    assert missing.value.status == 404
    assert missing.value.code == "not_found"
    with pytest.raises(ValidationError) as invalid:
        weir.trigger("people", b"email,city\nz@x.io,Rome\n", filename="z.csv", parameters={"nope": 1})
    assert invalid.value.status == 422
    assert invalid.value.code == "invalid_parameters"
    assert isinstance(invalid.value, WeirError)
    with pytest.raises(NotFound):
        weir.connector("no_such_connector")
    assert "people" in [c["api_name"] for c in weir.connectors()]

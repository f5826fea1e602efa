"""The words both HTTP clients (``velora-bench submit``, the dashboard) give an API error's detail."""

from __future__ import annotations

from velora_core.contract.http_api import API_PREFIX, detail_text


def test_field_errors_become_one_line_without_request_parts_or_pydantic_prefix():
    detail = [
        {"loc": ["body", "base", "steps"], "msg": "Input should be greater than or equal to 1"},
        {"loc": ["query", "limit"], "msg": "Value error, too many\n  rows"},
        {"loc": ["body"], "msg": "not JSON"},
    ]
    assert detail_text(detail) == (
        "base.steps: Input should be greater than or equal to 1; limit: too many rows; not JSON"
    )


def test_a_string_detail_is_kept_and_an_empty_one_is_none():
    assert detail_text("Run not found") == "Run not found"
    assert detail_text("") is None and detail_text(None) is None and detail_text([]) is None
    assert API_PREFIX == "/api/v1"

"""Log configuration and redaction."""

from __future__ import annotations

import io
import json

import structlog

from worker.log import configure, redact


def test_redact_removes_secrets_and_signed_queries() -> None:
    """Secret-named fields are replaced and URL query strings stripped, wherever they appear."""
    event = {
        "event": "x",
        "api_key": "cl-123",
        "Authorization": "Bearer lp_1",
        "url": "https://bucket.s3.amazonaws.com/a.pdf?X-Amz-Signature=abc&X-Amz-Credential=k",
        "error": "GET https://h/x.pdf?sig=zzz failed",
        "size": 5,
    }
    out = redact(None, "info", dict(event))
    assert out["api_key"] == "[redacted]" and out["Authorization"] == "[redacted]"
    assert out["url"] == "https://bucket.s3.amazonaws.com/a.pdf"
    assert out["error"] == "GET https://h/x.pdf failed"
    assert out["size"] == 5


def test_json_lines_when_not_a_terminal() -> None:
    """Off a TTY each event is one JSON object with an ISO UTC timestamp and the level."""
    stream = io.StringIO()
    configure(level="info", fmt="auto", stream=stream)
    try:
        structlog.get_logger("t").info("job_finished", job="cloudlayer:a", token="secret")
        structlog.get_logger("t").debug("hidden")
    finally:
        structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "job_finished" and event["level"] == "info"
    assert event["timestamp"].endswith("Z") and event["token"] == "[redacted]"

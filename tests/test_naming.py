"""Destination keys: templates, sanitising, extensions."""

from __future__ import annotations

import os
import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.naming import DEFAULT_TEMPLATE, choose_ext, render_key, sanitise, validate_template


def test_default_layout() -> None:
    """Plain ids land at provider/job/asset.ext unchanged."""
    key = render_key(DEFAULT_TEMPLATE, provider="cloudlayer", job="job_1", asset="a-9", ext="pdf")
    assert key == "cloudlayer/job_1/a-9.pdf"


@pytest.mark.parametrize(
    "hostile", ["../../etc/passwd", "/etc/passwd", "..", ".", "", "a/b\\c", "x\x00y", "~root"]
)
def test_hostile_ids_stay_inside(hostile: str, tmp_path: object) -> None:
    """Ids that try to climb out, go absolute or hide become one harmless segment."""
    key = render_key(DEFAULT_TEMPLATE, provider="cloudlayer", job=hostile, asset=hostile, ext="pdf")
    root = "/srv/assets"
    resolved = posixpath.normpath(posixpath.join(root, key))
    assert resolved.startswith(root + "/")
    assert all(part not in ("", ".", "..") for part in key.split("/"))
    assert len(key.split("/")) == 3


@given(job=st.text(max_size=300), asset=st.text(max_size=300))
def test_no_id_escapes_the_root(job: str, asset: str) -> None:
    """For any ids the rendered key is a relative path of exactly the template's segments."""
    key = render_key(DEFAULT_TEMPLATE, provider="layers", job=job, asset=asset, ext="png")
    parts = key.split("/")
    assert len(parts) == 3
    assert not key.startswith("/")
    assert all(p not in ("", ".", "..") and not p.startswith(".") for p in parts)
    assert os.path.normpath(key) == key


@given(a=st.text(max_size=50), b=st.text(max_size=50))
def test_distinct_ids_stay_distinct(a: str, b: str) -> None:
    """Sanitising never maps two different ids to the same name."""
    if a != b:
        assert sanitise(a) != sanitise(b)


def test_long_ids_are_bounded() -> None:
    """Very long ids are shortened (with a hash) to stay within file-name limits."""
    name = sanitise("x" * 1000)
    assert len(name) < 120
    assert name != sanitise("x" * 999)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{provider}/{job}.{ext}", "asset"),
        ("{provider}/{asset}.{ext}", "job"),
        ("{provider}/{nope}/{job}/{asset}", "unknown"),
        ("/abs/{job}/{asset}", "relative"),
        ("../{job}/{asset}", "unsafe"),
        ("a//{job}/{asset}", "unsafe"),
    ],
)
def test_bad_templates_are_refused(template: str, message: str) -> None:
    """A template that could overwrite assets or escape the root is a configuration error."""
    with pytest.raises(ValueError, match=message):
        validate_template(template)


def test_custom_template() -> None:
    """A valid custom template renders with the same sanitising."""
    template = validate_template("out/{provider}-{job}/{asset}.{ext}")
    assert render_key(template, provider="cloudlayer", job="j/1", asset="a", ext="pdf").startswith(
        "out/cloudlayer-j_1~"
    )


def test_choose_ext() -> None:
    """The vendor's extension wins, then the URL's, then the content type's, else bin."""
    assert choose_ext(hint="PDF", url="https://x/y.png", content_type="image/png") == "pdf"
    assert choose_ext(hint=None, url="https://x/file.webp?sig=1", content_type=None) == "webp"
    assert choose_ext(hint=None, url="https://x/file", content_type="image/jpeg; q=1") == "jpg"
    assert choose_ext(hint=None, url=None, content_type="application/x-unknown-thing") == "bin"
    assert choose_ext(hint="../../x", url=None, content_type=None) == "bin"

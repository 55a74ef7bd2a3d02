"""Destination keys: templates, sanitising, extensions."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re

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


def tag(value: str) -> str:
    """The short hash sanitise appends to a value it had to change."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def test_ids_that_clean_to_the_same_text_get_different_names() -> None:
    """ "a/b", "a:b" and "a_b" all clean to "a_b": only the untouched one keeps that name, the others
    carry a hash of the original, so two assets never share (and overwrite) one file."""
    keys = {
        render_key(DEFAULT_TEMPLATE, provider="layers", job="j", asset=asset, ext="pdf")
        for asset in ("a/b", "a:b", "a_b")
    }
    assert keys == {"layers/j/a_b.pdf", f"layers/j/a_b~{tag('a/b')}.pdf", f"layers/j/a_b~{tag('a:b')}.pdf"}


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("a", "a"),
        ("x" * 100, "x" * 100),
        ("x" * 101, "x" * 100 + "~" + tag("x" * 101)),
        (".hidden", "_hidden~" + tag(".hidden")),
        ("..", "_.~" + tag("..")),
        ("", "_~" + tag("")),
        ("\ud800", "_~" + tag("\ud800")),  # a lone surrogate, as JSON may carry one
    ],
)
def test_sanitised_names(value: str, name: str) -> None:
    """Safe values up to 100 characters are kept as they are; longer, hidden, empty or unsafe ones
    become a safe stem plus ``~`` and ten hex digits of the original's sha256."""
    assert sanitise(value) == name


@pytest.mark.parametrize("ext", ["pdf/x", "pdf.x", "PDF", "x" * 11, ""])
def test_an_unsafe_extension_becomes_bin(ext: str) -> None:
    """An extension is lower-case letters and digits only, at most ten: anything else (a slash
    would add a directory) is replaced by ``bin``."""
    key = render_key(DEFAULT_TEMPLATE, provider="layers", job="j", asset="a", ext=ext)
    assert key == "layers/j/a.bin"
    assert render_key(DEFAULT_TEMPLATE, provider="layers", job="j", asset="a", ext="x" * 10).endswith(
        ".xxxxxxxxxx"
    )


@pytest.mark.parametrize(
    "template", ["../{job}/{asset}", "/abs/{job}/{asset}", "a//{job}/{asset}", "./{job}/{asset}", "."]
)
def test_render_key_refuses_an_unvalidated_template_that_is_not_a_plain_path(template: str) -> None:
    """render_key itself refuses a key that is not a plain relative path (one that climbs out, is
    absolute, has empty or "." segments, or is the root itself), whatever template it was given."""
    key = template.format(job="j", asset="a")
    with pytest.raises(ValueError, match=re.escape(f"rendered key {key!r} is not a safe relative path")):
        render_key(template, provider="layers", job="j", asset="a", ext="pdf")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("./{job}/{asset}", "unsafe segment '.'"),
        ("a/{job}/../{asset}", "unsafe segment '..'"),
        (
            "a b/{job}/{asset}",
            "path template 'a b/{job}/{asset}' has an unsafe segment 'a b' "
            "(only letters, digits, '.', '_', '-' and {fields} are allowed)",
        ),
        ("a\\b/{job}/{asset}", "must be relative and use '/' separators"),
    ],
)
def test_template_errors_say_what_is_wrong(template: str, message: str) -> None:
    """A refused template's message names the problem, so an operator can fix the setting."""
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_template(template)


def test_minimal_templates_are_valid() -> None:
    """Job and asset are all a template needs; provider and extension are optional."""
    assert validate_template("{job}/{asset}") == "{job}/{asset}"


@pytest.mark.parametrize(
    ("hint", "url", "content_type", "ext"),
    [
        (".PDF", None, None, "pdf"),
        ("JPEG", None, None, "jpg"),
        ("pdf/x", "https://x/y.png", None, "png"),
        (None, "https://x/report.v2.webp", None, "webp"),
        (None, "https://x/file%2Epng", None, "png"),
        (None, "https://x/v1.2/file", "video/mp4", "mp4"),
        (None, "https://[broken/file.png", "video/webm", "webm"),
        (None, None, "image/jpeg; charset=binary; q=1", "jpg"),
        (None, None, "Video/QuickTime", "mov"),
        (None, None, "text/plain", "txt"),
    ],
)
def test_extension_sources(hint: str | None, url: str | None, content_type: str | None, ext: str) -> None:
    """Each source is read the way it is written (case, a leading dot, "jpeg", several dots, a
    percent-encoded dot, parameters after the media type); an unusable one gives way to the next."""
    assert choose_ext(hint=hint, url=url, content_type=content_type) == ext

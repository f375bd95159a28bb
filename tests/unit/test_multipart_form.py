"""An image edit's multipart/form-data body is read for its text fields, its files left
where they lie, and anything that is no well-formed form is a 400 naming what is wrong
(``extproc.multipart_form``): never a 500, whatever the bytes."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.errors import BadRequestError
from extproc.multipart_form import INVALID_MULTIPART, MAX_PARTS, MAX_TEXT_FIELD_BYTES, read_form

# Bytes that look like a form's own: a picture holding a boundary's start, CRLFs.
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"


def sdk_form(
    fields: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]]
) -> tuple[bytes, str]:
    """A form as httpx (under the openai SDK) encodes it, and its content type."""
    request = httpx.Request("POST", "http://gateway/v1/images/edits", data=fields, files=files)
    return request.read(), request.headers["content-type"]


def test_the_text_fields_are_read_and_the_files_located() -> None:
    body, content_type = sdk_form(
        {"model": "gpt-image-1", "prompt": "Add a boat.", "n": "2"},
        [("image[]", ("a.png", PICTURE, "image/png")), ("mask", ("m.png", b"M", "image/png"))],
    )
    form = read_form(body, content_type)
    assert form.fields == {"model": "gpt-image-1", "prompt": "Add a boat.", "n": "2"}
    image, mask = form.files
    assert (image.name, image.filename, image.content_type) == ("image[]", "a.png", "image/png")
    assert body[image.start : image.end] == PICTURE
    assert (mask.name, mask.size) == ("mask", 1)


def test_a_changed_field_is_spliced_in_and_every_other_byte_kept() -> None:
    body, content_type = sdk_form(
        {"model": "image-alias", "prompt": "Add a boat."},
        [("image", ("a.png", PICTURE, "image/png"))],
    )
    form = read_form(body, content_type)
    assert form.with_fields({"model": "image-alias", "prompt": "Add a boat."}) is None
    spliced = form.with_fields({"model": "gpt-image-1"})
    assert spliced is not None
    assert spliced == body.replace(b"image-alias", b"gpt-image-1")
    again = read_form(spliced, content_type)
    assert again.fields["model"] == "gpt-image-1"
    assert spliced[again.files[0].start : again.files[0].end] == PICTURE


def test_a_field_the_form_lacks_is_added_as_a_part() -> None:
    body, content_type = sdk_form(
        {"prompt": "Add a boat."}, [("image", ("a.png", PICTURE, "image/png"))]
    )
    spliced = read_form(body, content_type).with_fields({"model": "gpt-image-1"})
    assert spliced is not None and spliced.endswith(body)
    assert read_form(spliced, content_type).fields == {
        "model": "gpt-image-1",
        "prompt": "Add a boat.",
    }


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        (None, "no content-type"),
        ("application/json", "'application/json'"),
        ("multipart/form-data", "no boundary"),
        ("multipart/form-data; boundary=" + "b" * 71, "no boundary"),
        ("multipart/form-data; boundary=\u2603", "multipart/form-data body"),
    ],
)
def test_a_body_that_is_no_form_is_a_400_naming_why(content_type: str | None, words: str) -> None:
    body, _ = sdk_form({"prompt": "x"}, [("image", ("a.png", b"P", "image/png"))])
    with pytest.raises(BadRequestError) as refused:
        read_form(body, content_type)
    assert refused.value.code == INVALID_MULTIPART
    assert words in refused.value.message


def test_a_cut_empty_or_ambiguous_form_is_a_400() -> None:
    body, content_type = sdk_form({"prompt": "x"}, [("image", ("a.png", PICTURE, "image/png"))])
    for broken in (b"", body[: len(body) // 2], b"junk" + body[:10]):
        with pytest.raises(BadRequestError):
            read_form(broken, content_type)
    boundary = b"b0undary"
    twice_type = "multipart/form-data; boundary=b0undary"
    part = b'--%s\r\nContent-Disposition: form-data; name="model"\r\n\r\n%s\r\n'
    repeated = part % (boundary, b"a") + part % (boundary, b"b") + b"--%s--\r\n" % boundary
    with pytest.raises(BadRequestError, match="'model' twice"):
        read_form(repeated, twice_type)
    latin = part % (boundary, b"\xe9") + b"--%s--\r\n" % boundary
    with pytest.raises(BadRequestError, match="not UTF-8"):
        read_form(latin, twice_type)
    huge = part % (boundary, b"x" * (MAX_TEXT_FIELD_BYTES + 1)) + b"--%s--\r\n" % boundary
    with pytest.raises(BadRequestError, match="more than"):
        read_form(huge, twice_type)


def test_a_form_of_more_parts_than_an_edit_has_is_a_400_and_its_names_cut_short() -> None:
    """A megabyte of tiny parts held the event loop for a third of a second; refused at
    the part past the limit. A client's field name is quoted cut short."""
    part = b'--bnd\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nv\r\n'
    body = b"".join(part % i for i in range(20_000)) + b"--bnd--\r\n"
    with pytest.raises(BadRequestError, match=f"more than {MAX_PARTS} parts"):
        read_form(body, "multipart/form-data; boundary=bnd")
    long_name = b"n" * 5_000
    twice = b'--bnd\r\nContent-Disposition: form-data; name="%s"\r\n\r\nv\r\n' % long_name
    with pytest.raises(BadRequestError) as refused:
        read_form(twice * 2 + b"--bnd--\r\n", "multipart/form-data; boundary=bnd")
    assert len(refused.value.message) < 200


_VALID, _VALID_TYPE = sdk_form(
    {"model": "gpt-image-1", "prompt": "Add a boat."},
    [("image", ("a.png", PICTURE[:64], "image/png"))],
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        # The valid form cut, spliced and mangled at random places.
        st.tuples(st.integers(0, len(_VALID)), st.binary(max_size=40)).map(
            lambda cut: _VALID[: cut[0]] + cut[1] + _VALID[cut[0] :]
        ),
        st.integers(0, len(_VALID)).map(lambda cut: _VALID[:cut]),
    ),
    st.one_of(st.none(), st.just(_VALID_TYPE), st.text(max_size=80)),
)
def test_the_reader_never_raises_anything_but_a_400(body: bytes, content_type: str | None) -> None:
    try:
        form = read_form(body, content_type)
    except BadRequestError as refused:
        assert refused.status == 400
        return
    # What it read lies within the body.
    for part in form.files:
        assert 0 <= part.start <= part.end <= len(body)

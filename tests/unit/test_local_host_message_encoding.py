"""Queue message body encoding (host.json messageEncoding) and output-binding values."""

from __future__ import annotations

import base64

import pytest

from local_host.invoker import output_messages
from local_host.queue_storage import MessageDecodeError, decode_message_body, encode_message_body


def test_base64_decoding() -> None:
    raw = base64.b64encode(b'{"job": 1}').decode()
    assert decode_message_body(raw, "base64") == b'{"job": 1}'


def test_base64_decoding_of_binary_and_unicode() -> None:
    data = "héllo ✓".encode() + b"\x00\xff"
    assert decode_message_body(base64.b64encode(data).decode(), "base64") == data


def test_base64_decoding_ignores_whitespace_like_dotnet() -> None:
    raw = base64.b64encode(b"x" * 100).decode()
    wrapped = "\n".join(raw[i : i + 20] for i in range(0, len(raw), 20))
    assert decode_message_body(wrapped, "base64") == b"x" * 100


@pytest.mark.parametrize("raw", ["not base64!", '{"job": 1}', "abc", "é"])
def test_invalid_base64_is_an_error(raw: str) -> None:
    with pytest.raises(MessageDecodeError):
        decode_message_body(raw, "base64")


def test_none_encoding_passes_text_through() -> None:
    assert decode_message_body('{"job": 1}', "none") == b'{"job": 1}'
    assert decode_message_body(b"bytes", "none") == b"bytes"


def test_encode_round_trips() -> None:
    for encoding in ("base64", "none"):
        for content in ("plain text", '{"a": "é"}'):
            assert decode_message_body(encode_message_body(content, encoding), encoding) == content.encode()
    assert encode_message_body(b"\x00\x01", "base64") == "AAE="


def test_output_messages() -> None:
    assert output_messages(None) == []
    assert output_messages("one") == ["one"]
    assert output_messages(["a", b"b"]) == ["a", b"b"]
    with pytest.raises(TypeError):
        output_messages({"not": "allowed"})

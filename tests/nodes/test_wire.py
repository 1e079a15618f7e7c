"""The control API's protocol (emunet.nodes.wire): byte-exact frames, replies read."""

from __future__ import annotations

from typing import Any

import pytest
from emunet.nodes.wire import (
    MAX_FRAME,
    ControlError,
    ControlNotFound,
    decode_body,
    decode_frame_length,
    encode_frame,
    error_message,
    reply_result,
    request_message,
    result_message,
    stream_message,
)

from emunet.errors import EmunetError

# frames as protocol version 1 has always sent them (older agents and clients)
GOLDEN = [
    (
        request_message(7, "status", {}, None),
        "0000001884a17601a2696407a26f70a6737461747573a46172677380",
    ),
    (
        error_message(None, "busy", "x"),
        "0000002784a17601a26964c0a26f6bc2a56572726f7282a4636f6465a462757379a76d657373616765a178",
    ),
]


@pytest.mark.parametrize(("message", "frame"), GOLDEN)
def test_frames_are_byte_identical_to_version_1(message: dict[str, Any], frame: str) -> None:
    raw = encode_frame(message)
    assert raw.hex() == frame
    assert decode_frame_length(raw[:4]) == len(raw) - 4
    assert decode_body(raw[4:]) == message


@pytest.mark.parametrize(
    "message",
    [
        request_message(1, "exec", {"argv": ["ip", "addr"], "stdin": b"\x00"}, "tok"),
        stream_message(3, "pcap", b"\xd4\xc3\xb2\xa1"),
        stream_message(3, "out", "PING 10.244.2.2\n"),
        result_message(9, {"exit": 0, "dropped": 0}),
        error_message(2, "not_found", "no pod 'x'"),
    ],
)
def test_messages_round_trip(message: dict[str, Any]) -> None:
    assert decode_body(encode_frame(message)[4:]) == message


def test_a_request_over_the_limit_is_the_callers_mistake() -> None:
    big = request_message(1, "exec", {"stdin": b"x" * MAX_FRAME}, None)
    with pytest.raises(EmunetError, match="too large"):
        encode_frame(big)
    assert len(encode_frame(big, limit=None)) > MAX_FRAME  # the agent's replies


def test_reply_result() -> None:
    assert reply_result(result_message(1, {"a": 1})) == {"a": 1}
    with pytest.raises(ControlNotFound) as nf:
        reply_result(error_message(1, "not_found", "no pod 'x'\nmore"))
    assert nf.value.code == "not_found" and str(nf.value) == "no pod 'x'"
    with pytest.raises(ControlError) as err:
        reply_result({"ok": False, "error": "garbage"})
    assert err.value.code == "internal" and not isinstance(err.value, ControlNotFound)

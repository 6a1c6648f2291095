"""Sized frames (PROTOCOL.rst, extension 4): the decoder, and large messages end to end."""

import os
import random
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hein import ProtocolError
from hein._framing import (
    ACK,
    KIND_JSON,
    KIND_RAW,
    SIZED_THRESHOLD,
    TERMINATOR,
    Frame,
    FrameDecoder,
    FrameTooLarge,
    encode_frame,
    parse_frame,
    sized_header,
)
from hein.core import json_dumps, json_loads
from tests.helpers import Collector, wait_for, wait_registered


def decode_all(stream, cuts, max_frame_size=1 << 20):
    decoder = FrameDecoder(max_frame_size)
    out = []
    previous = 0
    for cut in [*sorted(cuts), len(stream)]:
        out += decoder.feed(stream[previous:cut])
        previous = cut
    return [item if type(item) is Frame else parse_frame(item) for item in out]


payloads = st.binary(max_size=300).map(lambda b: b + b"\xac\x96\xac\x96\xee" * (len(b) % 3))


@settings(deadline=None, max_examples=150)
@given(
    st.lists(st.tuples(st.booleans(), payloads, st.sampled_from(["", "t", "a.b c"])), max_size=8),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_mixed_sized_and_terminated_frames_decode_whatever_the_chunks(items, cuts):
    stream = b""
    expected = []
    for sized, payload, tag in items:
        if sized:
            stream += sized_header(KIND_RAW, tag, False, len(payload)) + payload
        else:
            stream += encode_frame(KIND_RAW, tag, False, payload)
        expected.append(Frame(KIND_RAW, tag or None, False, payload))
    cuts = [c for c in cuts if c <= len(stream)]
    assert decode_all(stream, cuts) == expected


def test_sized_frame_read_in_place_with_sized_target():
    payload = os.urandom(200_000) + TERMINATOR
    stream = (
        sized_header(KIND_RAW, "big", False, len(payload))
        + payload
        + encode_frame(KIND_RAW, None, False, b"after")
    )
    decoder = FrameDecoder()
    out = decoder.feed(stream[:100])
    assert out == [] and decoder.sized_target() is not None
    position = 100
    while decoder.sized_target() is not None:
        target = decoder.sized_target()
        chunk = stream[position : position + min(len(target), 7000)]
        target[: len(chunk)] = chunk
        out += decoder.sized_filled(len(chunk))
        position += len(chunk)
    out += decoder.feed(stream[position:])
    assert out[0] == Frame(KIND_RAW, "big", False, payload)
    assert parse_frame(out[1]).payload == b"after"


@pytest.mark.parametrize(
    "header",
    [b"__siz__:abc:", b"__siz__x12:", b"__siz__:3:", b"__siz__:" + b"9" * 30],
)
def test_malformed_sized_headers_raise_protocol_error(header):
    decoder = FrameDecoder(1 << 20)
    with pytest.raises(ProtocolError):
        decoder.feed(header + b"x" * 40)


def test_sized_frame_over_the_limit_is_refused_before_it_is_read():
    decoder = FrameDecoder(4096)
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"__siz__:4097:")
    assert decoder.buffered == 0


def test_large_messages_reach_hein_1_and_0_2_3_style_receivers_intact(closer):
    """Above the threshold a hein 1 receiver gets sized frames, a 0.2.3-style one escaped ones."""
    t = closer.transmitter(5)
    got = Collector()
    r = closer.receiver(t.port, "modern", got)
    wait_registered(t, "modern")
    assert wait_for(lambda: r._control_sock is not None, 5.0)
    legacy = socket.create_connection(("127.0.0.1", t.port), timeout=5)
    try:
        assert legacy.recv(1) == ACK
        legacy.sendall(b"oldstyle")
        assert legacy.recv(1) == ACK
        wait_registered(t, ["modern", "oldstyle"])
        rng = random.Random(7)
        raw = bytes(rng.getrandbits(8) for _ in range(SIZED_THRESHOLD * 3)) + TERMINATOR
        value = {"blob": raw, "text": "é" * 70_000}
        t.tell_raw(raw, tag="raw")
        t.tell(value, tag="val")
        t.tell("small")
        items = got.wait_for_count(3)
        assert items == [(raw, "raw"), (value, "val"), ("small", None)]
        # the 0.2.3-style reader: only terminated frames, ACK per read
        stream = b""
        frames = []
        while len(frames) < 4:  # hello ping + 3 messages
            chunk = legacy.recv(1 << 20)
            assert chunk
            stream += chunk
            *complete, stream = stream.split(TERMINATOR)
            if complete:
                legacy.sendall(ACK)
            frames += complete
        parsed = [parse_frame(f) for f in frames]
        assert [f.kind for f in parsed[1:]] == [KIND_RAW, KIND_JSON, KIND_JSON]
        assert parsed[1].payload == raw
        assert json_loads(parsed[2].payload) == value
        assert parsed[2].payload == json_dumps(value)
    finally:
        legacy.close()

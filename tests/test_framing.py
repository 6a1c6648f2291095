"""Pure tests of hein/_framing.py: frame bytes, tag cleaning, frame parsing, the stream decoder."""

import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hein import FrameTooLarge, ProtocolError, json_dumps
from hein._framing import (
    ACK,
    DEFAULT_MAX_FRAME_SIZE,
    KIND_DIE,
    KIND_JSON,
    KIND_PING,
    KIND_RAW,
    KINDS,
    TAG_MAX_LENGTH,
    TERMINATOR,
    Frame,
    FrameDecoder,
    HeaderCache,
    clean_tag,
    encode_frame,
    escape_payload,
    parse_frame,
    unescape_payload,
)

TAG_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._- "
# Byte strings that stress the escaping: the terminator, its halves, the escape byte, and
# combinations that would form a terminator across an escape.
NASTY = [
    b"\xac",
    b"\x96",
    b"\xac\x96",
    b"\xee",
    b"\xac\x96\xee",
    b"\xac\x96\xac",
    b"\x96\xac\x96",
    TERMINATOR,
    b"\xac\x96\xac\x96\xee",
    b"__raw__",
    b":",
    b":0:",
    b"\x06",
    b"\x00",
]


# -------------------------------------------------------------------------- constants and bytes


def test_constants():
    assert ACK == b"\x06"
    assert TERMINATOR == b"\xac\x96\xac\x96"
    assert (KIND_RAW, KIND_JSON, KIND_PING, KIND_DIE) == (
        b"__raw__",
        b"__jsn__",
        b"__png__",
        b"__die__",
    )
    assert KINDS == {KIND_RAW, KIND_JSON, KIND_PING, KIND_DIE}
    assert TAG_MAX_LENGTH == 15
    assert DEFAULT_MAX_FRAME_SIZE >= 1024 * 1024


@pytest.mark.parametrize(
    "kind, tag, unpack, payload, expected",
    [
        (KIND_RAW, None, False, b"hello!", b"__raw__:0:hello!\xac\x96\xac\x96"),
        (KIND_RAW, "", False, b"hello!", b"__raw__:0:hello!\xac\x96\xac\x96"),
        (KIND_RAW, "x", False, b"hello!", b"__raw__x:0:hello!\xac\x96\xac\x96"),
        (
            KIND_RAW,
            "my tag!*",
            False,
            b"by\xac\x96tes",
            b"__raw__my tag:0:by\xac\x96\xeetes\xac\x96\xac\x96",
        ),
        (KIND_JSON, None, True, b'"i:5"', b'__jsn__:1:"i:5"\xac\x96\xac\x96'),
        (KIND_PING, None, True, b"", b"__png__:1:\xac\x96\xac\x96"),
        (KIND_DIE, None, False, b"", b"__die__:0:\xac\x96\xac\x96"),
        (KIND_RAW, b"by tes", False, b"", b"__raw__by tes:0:\xac\x96\xac\x96"),
        (
            KIND_RAW,
            "Captain-with-a-long-name",
            False,
            b"x",
            b"__raw__Captain-with-a-:0:x\xac\x96\xac\x96",
        ),
    ],
)
def test_encode_frame_observed_bytes(kind, tag, unpack, payload, expected):
    assert encode_frame(kind, tag, unpack, payload) == expected


def test_encode_frame_of_json_payload():
    assert encode_frame(KIND_JSON, None, True, json_dumps(5)) == b'__jsn__:1:"i:5"' + TERMINATOR


@pytest.mark.parametrize("kind", [b"", b"__raw_", b"__raw___", b"x"])
def test_encode_frame_refuses_bad_kind(kind):
    with pytest.raises(ValueError):
        encode_frame(kind, None, False, b"")


@pytest.mark.parametrize(
    "payload, escaped",
    [
        (b"", b""),
        (b"abc", b"abc"),
        (b"\xac\x96", b"\xac\x96\xee"),
        (b"\xac\x96\xac\x96", b"\xac\x96\xee\xac\x96\xee"),
        (b"\xac\x96\xee", b"\xac\x96\xee\xee"),
        (b"\xac\xac\x96\x96", b"\xac\xac\x96\xee\x96"),
        (b"\xac", b"\xac"),
        (b"\x96", b"\x96"),
    ],
)
def test_escape_payload(payload, escaped):
    assert escape_payload(payload) == escaped
    assert unescape_payload(escaped) == payload


@given(st.lists(st.sampled_from(NASTY) | st.binary(max_size=8)).map(b"".join))
@settings(deadline=None, max_examples=300)
def test_escape_is_sound(payload):
    escaped = escape_payload(payload)
    assert unescape_payload(escaped) == payload
    # the terminator can never appear inside an escaped payload, nor straddle its end
    assert TERMINATOR not in escaped + TERMINATOR[:3]
    assert (escaped + TERMINATOR).find(TERMINATOR) == len(escaped)


# -------------------------------------------------------------------------------------- tags


@pytest.mark.parametrize(
    "tag, expected",
    [
        (None, ""),
        ("", ""),
        ("x", "x"),
        ("my tag!*", "my tag"),
        ("a.b_c-d e", "a.b_c-d e"),
        ("héllo wörld", "hllo wrld"),
        ("Captain-with-a-long-name", "Captain-with-a-"),
        ("!!!!!!!!!!!!!!!!!!!!abc", "abc"),
        ("a:b", "ab"),
        ("tab\there", "tabhere"),
        (b"bytes tag\xff", "bytes tag"),
        (bytearray(b"ba"), "ba"),
        ("0123456789abcdefghij", "0123456789abcde"),
    ],
)
def test_clean_tag(tag, expected):
    assert clean_tag(tag) == expected


@pytest.mark.parametrize("tag", [5, 1.5, ["a"], object()])
def test_clean_tag_refuses_other_types(tag):
    with pytest.raises(TypeError):
        clean_tag(tag)


@given(st.text())
@settings(deadline=None, max_examples=300)
def test_clean_tag_properties(tag):
    cleaned = clean_tag(tag)
    assert len(cleaned) <= TAG_MAX_LENGTH
    assert set(cleaned) <= set(TAG_CHARS)
    assert clean_tag(cleaned) == cleaned
    kept = "".join(c for c in tag if c in TAG_CHARS)
    assert cleaned == kept[:TAG_MAX_LENGTH]


# ------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("unpack", [False, True])
@pytest.mark.parametrize("tag", ["", "t", "my tag", "A.b_c-9 x", "x" * TAG_MAX_LENGTH])
def test_parse_frame_each_kind(kind, unpack, tag):
    payload = b"pay\xac\x96load:1:\xee" + TERMINATOR
    raw = encode_frame(kind, tag, unpack, payload)
    assert raw.endswith(TERMINATOR)
    frame = parse_frame(raw[: -len(TERMINATOR)])
    assert frame == Frame(kind, tag or None, unpack, payload)
    assert frame.kind == kind and frame.unpack is unpack and frame.payload == payload
    assert frame.tag == (tag or None)


def test_parse_frame_empty_payload_and_colons_in_payload():
    assert parse_frame(b"__raw__:0:") == Frame(KIND_RAW, None, False, b"")
    assert parse_frame(b"__jsn__t:1::::") == Frame(KIND_JSON, "t", True, b":::")
    assert parse_frame(b"__raw__t:0:1:0:") == Frame(KIND_RAW, "t", False, b"1:0:")


@pytest.mark.parametrize("flag", [b"2", b"a", b" ", b"\x00", b"\xac", b"-"])
def test_parse_frame_bad_unpack_flag(flag):
    with pytest.raises(ProtocolError):
        parse_frame(b"__raw__tag:" + flag + b":payload")


@pytest.mark.parametrize(
    "kind", [b"__xyz__", b"__RAW__", b"__raw_:", b"       ", b"\x00" * 7, b"__ra", b""]
)
def test_parse_frame_unknown_kind(kind):
    with pytest.raises(ProtocolError):
        parse_frame(kind + b"tag:0:payload")


def test_parse_frame_restricted_kinds():
    assert parse_frame(b"__raw__:0:x", frozenset([KIND_RAW])).payload == b"x"
    with pytest.raises(ProtocolError):
        parse_frame(b"__jsn__:0:x", frozenset([KIND_RAW]))


@pytest.mark.parametrize(
    "data",
    [
        b"__raw__",  # kind only
        b"__raw__tag",  # no colon at all
        b"__raw__tag:",  # cut after the first colon
        b"__raw__tag:0",  # no second colon
        b"__raw__tag:0payload",  # no second colon, payload glued
        b"__raw__tag:00:payload",  # two-byte flag
        b"__raw__tag::payload",  # empty flag
        b"__raw__tag;0;payload",  # wrong separators
        b"__raw__" + b"x" * 40 + b":0:payload",  # tag far longer than 15 characters
        b"__raw__t\xe9g:0:payload",  # non-ASCII tag
        b"__raw__\xac\x96:0:payload",  # non-ASCII tag
    ],
)
def test_parse_frame_malformed_header(data):
    with pytest.raises(ProtocolError):
        parse_frame(data)


@given(st.binary(max_size=60))
@settings(deadline=None, max_examples=500)
def test_parse_frame_random_bytes_raise_only_protocol_error(data):
    for candidate in (data, KIND_RAW + data, KIND_JSON + b"t:" + data):
        try:
            frame = parse_frame(candidate)
        except ProtocolError:
            continue
        assert frame.kind in KINDS
        assert frame.tag is None or (frame.tag and frame.tag.isascii())


# ------------------------------------------------------------------------------- HeaderCache

tags = st.text(TAG_CHARS, max_size=TAG_MAX_LENGTH)
payloads = st.lists(st.sampled_from(NASTY) | st.binary(max_size=12), max_size=6).map(b"".join)
frames = st.builds(Frame, st.sampled_from(sorted(KINDS)), tags, st.booleans(), payloads)


def assert_cache_parses_like_parse_frame(cache, raw):
    try:
        want = parse_frame(raw, cache.known_kinds)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            cache.parse(raw)
    else:
        assert cache.parse(raw) == want


def test_header_cache_parses_like_parse_frame():
    cache = HeaderCache()
    raws = [
        b"__raw__t:0:a",
        b"__raw__t:0:b\xac\x96\xee",
        b"__raw__t:1:c",
        b"__raw__t:2:c",
        b"__raw__t:0",
        b"__raw__t:",
        b"__raw__u:0:",
        b"__jsn__t:0:d",
        b"__xyz__t:0:d",
        b"__raw__:0:",
        b"__raw__:0",
        b"__raw__t\xe9:0:x",
    ]
    for _ in range(3):  # first misses, then hits
        for raw in raws:
            assert_cache_parses_like_parse_frame(cache, raw)
    restricted = HeaderCache(frozenset([KIND_RAW]))
    assert restricted.parse(b"__raw__t:0:x").payload == b"x"
    for _ in range(2):
        with pytest.raises(ProtocolError):
            restricted.parse(b"__jsn__t:0:x")


def test_header_cache_stays_right_past_its_bound():
    cache = HeaderCache()
    count = HeaderCache.MAX_HEADERS * 2 + 7
    for round_ in range(2):
        for number in range(count):
            tag = "t%d" % number
            frame = cache.parse(b"__raw__%s:%d:p%d" % (tag.encode(), number % 2, round_))
            assert frame == Frame(KIND_RAW, tag, bool(number % 2), b"p%d" % round_)


@given(
    st.lists(
        frames.map(lambda f: encode_frame(f.kind, f.tag, f.unpack, f.payload)[:-4])
        | st.binary(max_size=30)
        | st.builds(
            lambda f, cut, junk: encode_frame(f.kind, f.tag, f.unpack, f.payload)[:cut] + junk,
            frames,
            st.integers(0, 30),
            st.sampled_from([b"", b":", b"0", b"1:", b"2:", b"\xff", b":0:", b"x"]),
        ),
        max_size=30,
    )
)
@settings(deadline=None, max_examples=300)
def test_header_cache_differential(raws):
    cache = HeaderCache()
    for raw in raws + raws:
        assert_cache_parses_like_parse_frame(cache, raw)


# ---------------------------------------------------------------------------------- decoding


def expected(frame):
    return frame._replace(tag=frame.tag or None)


def encode_all(frame_list):
    return b"".join(encode_frame(f.kind, f.tag, f.unpack, f.payload) for f in frame_list)


def decode_chunks(chunks, max_frame_size=DEFAULT_MAX_FRAME_SIZE):
    decoder = FrameDecoder(max_frame_size)
    out = []
    for chunk in chunks:
        out.extend(parse_frame(raw) for raw in decoder.feed(chunk))
    assert decoder.buffered == 0
    return out


def test_decoder_basic():
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"__raw__:0:hel") == []
    assert decoder.buffered == len(b"__raw__:0:hel")
    assert decoder.feed(b"lo!\xac\x96") == []
    assert decoder.feed(b"\xac") == []
    assert decoder.feed(b"\x96__png__:1:\xac\x96\xac\x96__jsn") == [
        b"__raw__:0:hello!",
        b"__png__:1:",
    ]
    assert decoder.buffered == 5
    assert decoder.feed(b"__:1:x" + TERMINATOR) == [b"__jsn__:1:x"]
    assert decoder.buffered == 0
    decoder.feed(b"__raw__")
    decoder.reset()
    assert decoder.buffered == 0
    assert decoder.feed(b":0:" + TERMINATOR) == [b":0:"]  # reset forgot "__raw__"


def test_decoder_several_frames_in_one_chunk_and_empty_frames():
    stream = encode_all([Frame(KIND_RAW, "a", False, b"1"), Frame(KIND_PING, "", True, b"")])
    decoder = FrameDecoder()
    assert decoder.feed(stream + TERMINATOR) == [b"__raw__a:0:1", b"__png__:1:", b""]


def test_decoder_escaped_terminator_half_at_chunk_boundaries():
    frame = Frame(KIND_RAW, "t", False, b"\xac\x96\xac\x96\xac")
    raw = encode_all([frame, frame])
    for cut in range(len(raw) + 1):
        assert decode_chunks([raw[:cut], raw[cut:]]) == [frame, frame]


def test_decoder_accepts_bytearray_and_memoryview():
    raw = encode_all([Frame(KIND_RAW, "", False, b"x")])
    assert FrameDecoder().feed(bytearray(raw)) == [b"__raw__:0:x"]
    assert FrameDecoder().feed(memoryview(raw)) == [b"__raw__:0:x"]


def test_decoder_refuses_tiny_limit():
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=3)


def test_decoder_frame_at_the_limit_passes_one_over_fails():
    limit = 100
    body = b"__raw__:0:" + b"x" * (limit - 10)
    assert len(body) == limit
    decoder = FrameDecoder(limit)
    assert decoder.feed(body + TERMINATOR) == [body]
    # the same, byte by byte
    decoder = FrameDecoder(limit)
    out = []
    for i in range(len(body) + 4):
        out += decoder.feed((body + TERMINATOR)[i : i + 1])
        assert decoder.buffered <= limit + 4
    assert out == [body]
    # one byte more: refused, complete in one chunk
    decoder = FrameDecoder(limit)
    with pytest.raises(FrameTooLarge):
        decoder.feed(body + b"x" + TERMINATOR)
    assert decoder.buffered == 0
    # ... or still arriving: refused before the buffer outgrows the limit
    decoder = FrameDecoder(limit)
    with pytest.raises(FrameTooLarge):
        for _ in range(1000):
            decoder.feed(b"y" * 7)
            assert decoder.buffered <= limit + 4
    assert decoder.buffered == 0


def test_frame_too_large_is_a_protocol_error():
    assert issubclass(FrameTooLarge, ProtocolError)
    decoder = FrameDecoder(64)
    with pytest.raises(ProtocolError):
        decoder.feed(b"z" * 1000)


@given(st.lists(frames, max_size=4))
@settings(deadline=None, max_examples=150)
def test_small_streams_split_at_every_point(frame_list):
    stream = encode_all(frame_list)
    assume(len(stream) <= 400)
    want = [expected(f) for f in frame_list]
    assert decode_chunks([stream]) == want
    for cut in range(len(stream) + 1):
        assert decode_chunks([stream[:cut], stream[cut:]]) == want
    # and byte by byte
    assert decode_chunks([stream[i : i + 1] for i in range(len(stream))]) == want


@given(st.lists(frames, min_size=1, max_size=40), st.data())
@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_blocks_hold_the_same_frames(frame_list, data):
    """feed_blocks gives runs of frames joined by the terminator: split, they are the frames."""
    stream = encode_all(frame_list)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    bounds = [0, *cuts, len(stream)]
    decoder = FrameDecoder()
    out = []
    blocks = 0
    for a, b in zip(bounds, bounds[1:]):
        for item in decoder.feed_blocks(stream[a:b]):
            blocks += 1
            out.extend(item.split(TERMINATOR) if type(item) is bytes else [item])
    assert [parse_frame(raw) for raw in out] == [expected(f) for f in frame_list]
    assert blocks <= len(bounds) - 1 + len(frame_list)
    whole = FrameDecoder().feed_blocks(stream)
    if len(stream) < 1024 * 1024 and b"__siz__" not in stream:
        assert len(whole) == 1  # one read, one block


@given(st.lists(frames, min_size=1, max_size=40), st.data())
@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_big_streams_random_chunkings(frame_list, data):
    stream = encode_all(frame_list)
    cuts = data.draw(
        st.lists(st.integers(0, len(stream)), max_size=min(len(stream), 200)).map(sorted)
    )
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    assert b"".join(chunks) == stream
    assert decode_chunks(chunks) == [expected(f) for f in frame_list]


@given(
    st.lists(
        st.sampled_from([*NASTY, b"__raw__:0:", b"__jsn__t:1:", b"__siz__:", b"__siz__:0:"])
        | st.binary(),
        max_size=60,
    ),
    st.integers(25, 120),
    st.data(),
)
@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_raise_only_protocol_errors_and_stay_bounded(pieces, limit, data):
    stream = b"".join(pieces)
    sizes = data.draw(st.lists(st.integers(1, 50), max_size=200))
    decoder = FrameDecoder(max_frame_size=limit)
    position = 0
    for size in [*sizes, len(stream)]:
        chunk = stream[position : position + size]
        position += size
        try:
            raws = decoder.feed(chunk)
        except FrameTooLarge:
            assert decoder.buffered == 0
            continue
        except ProtocolError:  # a malformed sized header: the reader closes the connection
            break
        assert decoder.buffered <= limit + 4
        for raw in raws:
            assert len(raw) <= limit
            assert TERMINATOR not in raw
            try:
                parse_frame(raw)
            except ProtocolError:
                pass
        if position >= len(stream):
            break


# -------------------------------------------------------------------------------- linearity

MIB = 1024 * 1024
CHUNK = 1024


def _feed_big_frame(mebibytes, deadline=30.0):
    """Feed one frame of ``mebibytes`` MiB in 1 KiB chunks; return the feeding time in seconds.

    Fails as soon as feeding takes longer than ``deadline`` seconds.
    """
    block = (b"\xac\x96\xac" + bytes(range(256)) + b"\xac\x96\xee\xee") * 4
    block = (block * (CHUNK // len(block) + 1))[:CHUNK]
    payload = block * (mebibytes * MIB // CHUNK)
    raw = encode_frame(KIND_RAW, "big", False, payload)
    decoder = FrameDecoder(max_frame_size=len(raw))
    view = memoryview(raw)
    frames = []
    start = time.perf_counter()
    for offset in range(0, len(raw), CHUNK):
        frames += decoder.feed(view[offset : offset + CHUNK])
        if offset % (1024 * CHUNK) == 0 and time.perf_counter() - start > deadline:
            pytest.fail(
                "feeding %d MiB took over %.0f s: stopped at %d MiB"
                % (mebibytes, deadline, offset // MIB)
            )
    elapsed = time.perf_counter() - start
    assert len(frames) == 1 and decoder.buffered == 0
    frame = parse_frame(frames[0])
    assert frame.tag == "big" and len(frame.payload) == len(payload)
    assert frame.payload == payload
    return elapsed


def test_decoder_time_is_linear_in_frame_size():
    # 100 MiB in 1 KiB chunks: a decoder that rescans its buffer on every read (hein 0.2.3) would
    # take hours; a linear one takes about a second.
    assert _feed_big_frame(100, deadline=30.0) < 30.0
    # 4 times the bytes must cost about 4 times the time (16 times if quadratic; cache and page
    # faults make a linear decoder reach 8 on a loaded machine). Best of three runs.
    small = min(_feed_big_frame(10) for _ in range(3))
    large = min(_feed_big_frame(40) for _ in range(3))
    assert large / small < 12, (small, large)

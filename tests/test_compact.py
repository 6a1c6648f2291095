"""The compact encoding (extension 5): every value decodes exactly as the extended JSON's does."""

import collections
import datetime as dt
import decimal
import json
import math
import zoneinfo

import pytest
import pytz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serializer import (
    BIG_INTS,
    NASTY_BYTES,
    NASTY_TEXT,
    Color,
    Level,
    MyInt,
    MyStr,
    QuotedRepr,
    keys,
    leaves,
    short_id,
    texts,
    unserializable_values,
    values,
)

from hein import ProtocolError, json_dumps, json_loads, register_type, unregister_type
from hein._compact import compact_dumps, compact_loads, compact_loads_many
from hein._serializer import DecodeFailure

MARK = "\x00"


def assert_identical(got, want, path="value"):
    """Same types, same values, same zones (as the extended JSON's decoding gives them)."""
    assert type(got) is type(want), path
    if type(want) is dict:
        assert list(got) == list(want), path
        for key in want:
            assert_identical(got[key], want[key], "%s[%r]" % (path, key))
    elif type(want) is list:
        assert len(got) == len(want), path
        for index, (item, wanted) in enumerate(zip(got, want)):
            assert_identical(item, wanted, "%s[%d]" % (path, index))
    elif type(want) is float:
        if math.isnan(want):
            assert math.isnan(got), path
        else:
            assert got == want and math.copysign(1, got) == math.copysign(1, want), path
    elif type(want) in (dt.datetime, dt.time):
        assert got.replace(tzinfo=None) == want.replace(tzinfo=None), path
        assert got.fold == want.fold, path
        assert type(got.tzinfo) is type(want.tzinfo), path
        if want.tzinfo is not None:
            assert got.tzinfo is want.tzinfo or got.tzinfo == want.tzinfo, path
            if type(want) is dt.datetime:
                assert got.utcoffset() == want.utcoffset(), path
                assert got.tzname() == want.tzname() and got.dst() == want.dst(), path
    else:
        assert got == want, path


def check(value):
    payload = compact_dumps(value)
    assert type(payload) is bytes
    json.loads(payload.decode("utf-8", "surrogatepass"))  # valid JSON for any parser
    got = compact_loads(payload)
    assert_identical(got, json_loads(json_dumps(value)))
    return payload


@given(values)
@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_nested_values_decode_as_the_extended_json_does(value):
    check(value)


@given(leaves)
@settings(deadline=None, max_examples=400)
def test_leaves_decode_as_the_extended_json_does(value):
    check(value)


@given(st.dictionaries(keys | st.just(MARK), leaves, max_size=6))
@settings(deadline=None, max_examples=300)
def test_any_keys_decode_as_the_extended_json_does(value):
    check(value)
    check([value, {"a": value}])


@given(st.lists(texts, max_size=4), st.lists(st.binary(max_size=40), max_size=4))
@settings(deadline=None, max_examples=200)
def test_text_and_bytes(strings, blobs):
    check([strings, blobs])


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        1.5,
        -0.0,
        math.inf,
        -math.inf,
        math.nan,
        "",
        b"",
        b"\x00\xff",
        [],
        {},
        (),
        {MARK: 1},
        {MARK: {MARK: [MARK]}},
        {"\x00x": 1, "x\x00": 2},
        {1: "a", "1": "b"},
        {None: 1, True: 2, 1.5: 3, (1, 2): 4},
        [{MARK: b"x"}, [{MARK: dt.date(2017, 1, 1)}]],
        {"t": {MARK: ["t", 2017, 6, 1, 0, 0, 0, 0]}},
        {MARK: "t:2017,6,1,0,0,0,0,"},
        dt.date(1, 1, 1),
        dt.datetime.min,
        dt.datetime.max,
        dt.time.max,
        dt.time(1, 2, tzinfo=pytz.timezone("Europe/Paris")),
        dt.time(1, 2, tzinfo=dt.timezone(dt.timedelta(hours=1, microseconds=5))),
        dt.datetime(2017, 6, 1, tzinfo=pytz.utc),
        dt.datetime(2017, 6, 1, tzinfo=dt.timezone.utc),
        dt.datetime(2017, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3, microseconds=7))),
        pytz.timezone("Europe/Paris").localize(dt.datetime(2017, 10, 29, 2, 30), is_dst=True),
        pytz.timezone("Europe/Paris").localize(dt.datetime(2017, 10, 29, 2, 30), is_dst=False),
        dt.datetime(2017, 10, 29, 2, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(1, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
        dt.datetime(1, 1, 1, tzinfo=pytz.timezone("Asia/Tokyo")),
        dt.datetime.max.replace(tzinfo=zoneinfo.ZoneInfo("America/New_York")),
        *BIG_INTS,
        [10**5000, -(10**5000), {"n": 2**100_000}],
        *NASTY_TEXT,
        *NASTY_BYTES,
        complex(1, 2),
        {1, 2},
        decimal.Decimal("1.5"),
        Color.RED,
        QuotedRepr(),
        dt.timedelta(seconds=1),
        MyInt(7),
        Level.HIGH,
        MyStr("me"),
        {MyStr("k"): MyInt(1), Level.HIGH: 2},
        bytearray(b"ab"),
        memoryview(b"ab"),
        collections.OrderedDict(a=1),
        collections.defaultdict(list, a=[1]),
        collections.namedtuple("P", "x y")(1, 2),
    ],
    ids=lambda value: short_id(value) if not isinstance(value, list) else "list",
)
def test_examples(value):
    check(value)
    check({"k": [value]})


def test_plain_values_are_plain_json():
    assert compact_dumps({"i": 1, "x": 1.5, "s": "é", "l": [True, None]}) == (
        '{"i":1,"x":1.5,"s":"é","l":[true,null]}'.encode()
    )
    assert compact_dumps(b"\x00\xff") == b'{"\\u0000":["y","AP8="]}'
    assert compact_dumps(dt.datetime(2017, 6, 1, 12, tzinfo=dt.timezone.utc)) == (
        b'{"\\u0000":["t",2017,6,1,12,0,0,0,0,0]}'
    )
    assert compact_dumps({MARK: 1}) == b'{"\\u0000":["d",[["\\u0000",1]]]}'


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


class Celsius(float):
    pass


class Tags(list):
    pass


def test_registered_types_including_subclasses_of_json_types():
    register_type(
        Point, "P", lambda p: "%d,%d" % (p.x, p.y), lambda s: Point(*map(int, s.split(",")))
    )
    register_type(Celsius, "C", lambda c: repr(float(c)) + "é", lambda s: Celsius(s[:-1]))
    register_type(Tags, "G", lambda t: ",".join(t), lambda s: Tags(s.split(",")))
    try:
        for value in ([Point(1, 2), Celsius(21.5)], {"a": Celsius(1.0), "t": Tags(["x", "y"])}):
            got = compact_loads(compact_dumps(value))
            want = json_loads(json_dumps(value))
            assert got == want
            assert [type(item) for item in (got if type(got) is list else got.values())] == [
                type(item) for item in (want if type(want) is list else want.values())
            ]
        assert type(compact_loads(compact_dumps(Celsius(2.0)))) is Celsius
    finally:
        for cls in (Point, Celsius, Tags):
            unregister_type(cls)
    assert type(compact_loads(compact_dumps(Celsius(2.0)))) is float  # the fast path is back


def test_recursive_and_too_deep_values_raise_value_error():
    for value in unserializable_values():  # (the rebuilding walk recurses too: the dict)
        with pytest.raises(ValueError):
            compact_dumps(value)


BAD_PAYLOADS = [
    b"",
    b"{",
    b"[1,",
    b"1 2",
    b"\xff\xfe",
    b'{"\\u0000":1}',
    b'{"\\u0000":[]}',
    b'{"\\u0000":["?"]}',
    b'{"\\u0000":["t"]}',
    b'{"\\u0000":["t",2017,13,1,0,0,0,0]}',
    b'{"\\u0000":["t",2017,6,1,0,0,0,0,"0",0]}',
    b'{"\\u0000":["t",2017,6,1,0,0,0,0,0,0,2]}',
    b'{"\\u0000":["t",2017,6,1,0,0,0,0,99999999999999,0]}',
    b'{"\\u0000":["t",2017,6,1,0,0,0,0,0,' + b"9" * 500 + b"]}",
    b'{"\\u0000":["t",9999,12,31,23,0,0,0,7200000000,0]}',
    b'{"\\u0000":["t",1.5,6,1,0,0,0,0]}',
    b'{"\\u0000":["y","%%%"]}',
    b'{"\\u0000":["y",1]}',
    b'{"\\u0000":["y","AA==","x"]}',
    b'{"\\u0000":["d",1]}',
    b'{"\\u0000":["d",[[1,2]]]}',
    b'{"\\u0000":["d",[["a"]]]}',
    b'{"\\u0000":"q:1"}',
    b'{"\\u0000":"t:garbage"}',
    b'{"\\u0000":null}',
    b'{"\\u0000":["t",2017,6,1,0,0,0,0],"x":1}',
    b"[" * 100_000 + b"]" * 100_000,
    b"1" * 5000,
]


@pytest.mark.parametrize("payload", BAD_PAYLOADS, ids=lambda p: repr(p[:40]))
def test_bad_payloads_raise_protocol_error(payload):
    with pytest.raises(ProtocolError):
        compact_loads(payload)


def test_decoding_many_at_once():
    good = [
        compact_dumps({"i": i, "t": dt.datetime(2017, 6, 1, tzinfo=pytz.utc)}) for i in range(5)
    ]
    assert [v["i"] for v in compact_loads_many(good)] == list(range(5))
    mixed = good[:2] + BAD_PAYLOADS[:8] + good[2:]
    got = compact_loads_many(mixed)
    assert len(got) == len(mixed)
    assert [v["i"] for v in got if type(v) is not DecodeFailure] == list(range(5))
    assert all(type(v) is DecodeFailure for v in got[2:10])
    assert all(isinstance(v.error, ProtocolError) for v in got[2:10])
    assert compact_loads_many([]) == []
    assert compact_loads_many([b" 1 "]) == [1]

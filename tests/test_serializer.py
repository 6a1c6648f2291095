"""Pure tests of hein/_serializer.py (and hein.core.Message): the type-preserving extended JSON."""

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import fractions
import json
import math
import uuid
import zoneinfo

import hypothesis.extra.pytz
import pytest
import pytz
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hein.core
from hein import Message, ProtocolError, json_dumps, json_loads, register_type, unregister_type
from hein._serializer import BUILTIN_CODES

UTC = dt.timezone.utc
PARIS = "Europe/Paris"
NEW_YORK = "America/New_York"


# ------------------------------------------------------------------------------- comparisons


def instant(value):
    """The instant of an aware datetime, as a timedelta since datetime.min UTC (never overflows).

    (``==`` between two datetimes sharing a tzinfo compares wall times, not instants.)
    """
    return value.replace(tzinfo=None, fold=0) - dt.datetime.min - value.utcoffset()


def zone_identity(tzinfo, offset):
    """What must survive a round trip of a tzinfo: a pytz name, a zoneinfo key, or an offset."""
    zone = getattr(tzinfo, "zone", None)
    if isinstance(zone, str) and zone in pytz.all_timezones_set:
        return ("pytz", zone)
    if isinstance(tzinfo, zoneinfo.ZoneInfo):
        return ("zoneinfo", tzinfo.key)
    return ("fixed", offset)


def assert_same_datetime(got, want, path):
    assert type(got) is dt.datetime, path
    assert got.replace(tzinfo=None, fold=0) == want.replace(tzinfo=None, fold=0), path
    if want.tzinfo is None or want.utcoffset() is None:
        assert got.tzinfo is None, path
        return
    assert got.tzinfo is not None, path
    assert instant(got) == instant(want), path
    assert got.utcoffset() == want.utcoffset(), path
    assert zone_identity(got.tzinfo, got.utcoffset()) == zone_identity(
        want.tzinfo, want.utcoffset()
    ), path
    kind = zone_identity(want.tzinfo, None)[0]
    if kind != "fixed":
        assert got.dst() == want.dst() and got.tzname() == want.tzname(), path
    if kind == "pytz":  # localized properly: the zone's own tzinfo for that instant
        try:
            normalized = got.tzinfo.normalize(got)
        except OverflowError:  # pytz cannot normalize within a day of datetime.min/max
            normalized = got
        assert got.tzinfo is normalized.tzinfo, path
        assert got.tzinfo is want.tzinfo, path


def assert_same_time(got, want, path):
    assert type(got) is dt.time, path
    assert got.replace(tzinfo=None, fold=0) == want.replace(tzinfo=None, fold=0), path
    if want.tzinfo is None:
        assert got.tzinfo is None, path
        return
    assert got.tzinfo is not None, path
    assert got.utcoffset() == want.utcoffset(), path
    assert zone_identity(got.tzinfo, got.utcoffset()) == zone_identity(
        want.tzinfo, want.utcoffset()
    ), path


def assert_same(got, want, path="value"):
    """Assert that ``got`` is what a round trip of ``want`` must give: same types, same values."""
    if isinstance(want, (list, tuple)):
        assert type(got) is list, path
        assert len(got) == len(want), path
        for index, (item, wanted) in enumerate(zip(got, want)):
            assert_same(item, wanted, "%s[%d]" % (path, index))
    elif isinstance(want, dict):
        expected = {str(key): item for key, item in want.items()}
        assert type(got) is dict, path
        assert list(got) == list(expected), path
        for key, wanted in expected.items():
            assert_same(got[key], wanted, "%s[%r]" % (path, key))
    elif isinstance(want, float):
        assert type(got) is float, path
        if math.isnan(want):
            assert math.isnan(got), path
        else:
            assert got == want and math.copysign(1, got) == math.copysign(1, want), path
    elif isinstance(want, dt.datetime):
        assert_same_datetime(got, want, path)
    elif isinstance(want, dt.time):
        assert_same_time(got, want, path)
    elif isinstance(want, (bytes, bytearray, memoryview)):
        assert type(got) is bytes and got == bytes(want), path
    else:
        assert type(got) is type(want), path
        assert got == want, path


def short_id(value):
    """A test id for any value (repr of a huge int raises)."""
    if isinstance(value, int) and abs(value).bit_length() > 64:
        return "int-%d-bits" % value.bit_length()
    return repr(value)[:40]


def round_trip(value):
    payload = json_dumps(value)
    assert type(payload) is bytes
    # valid JSON over the Latin-1 view, for the strict standard parser too
    json.loads(payload.decode("latin-1"))
    return json_loads(payload)


# -------------------------------------------------------------------------------- strategies

NASTY_TEXT = [
    '"',
    "\\",
    "\x00",
    "\x1f",
    "\x7f",
    "\xac\x96",
    "\xac\x96\xac\x96",
    "\xee",
    "u:",
    ":",
    "\u2028",
    "\ud800",
    "\udfff",
    "\ud83d\ude00",
    "é",
    "€",
    "😀",
    "\n",
    "\t",
    "'",
    ",",
]
NASTY_BYTES = [
    b'"',
    b"\\",
    b"\x00",
    b"\xac\x96",
    b"\xac\x96\xac\x96",
    b"\xee",
    b"\xff",
    b"\x80",
    b"\xc3\xa9",
    b"\xed\xa0\x80",
    b"u:",
    b"\x1f",
]
BIG_INTS = [
    0,
    1,
    -1,
    2**31,
    2**63,
    -(2**63) - 1,
    2**64,
    10**4299,
    10**4300,
    -(10**4300),
    10**4301,
    3 * 10**5000 + 7,
    -(7**7000),
    2**100_000 + 1,
]

characters = st.characters(exclude_categories=()) | st.characters(
    min_codepoint=0xD800, max_codepoint=0xDFFF
)
texts = st.lists(st.text(characters, max_size=8) | st.sampled_from(NASTY_TEXT), max_size=5).map(
    "".join
)
binaries = st.lists(st.binary(max_size=8) | st.sampled_from(NASTY_BYTES), max_size=5).map(b"".join)
# (Ints over 4300 digits have no repr, which hypothesis needs to report an example: they have
# their own tests below.)
integers = st.integers() | st.sampled_from([n for n in BIG_INTS if abs(n) < 10**4000])
floats = st.floats() | st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1e308])

fixed_zones = (
    st.sampled_from([UTC, pytz.utc, dt.timezone(dt.timedelta(hours=5, minutes=30), "IST")])
    | st.integers(-86399, 86399).map(lambda seconds: dt.timezone(dt.timedelta(seconds=seconds)))
    | st.integers(-1439, 1439).map(pytz.FixedOffset)
)
all_zones = st.timezones() | hypothesis.extra.pytz.timezones() | fixed_zones
# Aware values are kept one day inside datetime's range: see test_aware_datetime_extremes.
aware_datetimes = st.datetimes(
    min_value=dt.datetime(1, 1, 2),
    max_value=dt.datetime(9999, 12, 30),
    timezones=all_zones,
    allow_imaginary=False,
)
naive_datetimes = st.datetimes()
times = st.times() | st.times(timezones=all_zones)

leaves = (
    st.none()
    | st.booleans()
    | integers
    | floats
    | texts
    | binaries
    | st.dates()
    | naive_datetimes
    | aware_datetimes
    | times
)
keys = texts | st.integers() | st.none() | st.booleans() | st.floats(allow_nan=False)


def containers(children):
    return (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(keys, children, max_size=5)
    )


values = st.recursive(leaves, containers, max_leaves=25)


# ------------------------------------------------------------------------------- round trips


@given(values)
@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_nested_values(value):
    assert_same(round_trip(value), value)


@given(leaves)
@settings(deadline=None, max_examples=300)
def test_round_trip_leaves(value):
    assert_same(round_trip(value), value)


@given(texts)
@settings(deadline=None, max_examples=300)
def test_round_trip_any_text(text):
    assert_same(round_trip(text), text)
    assert_same(round_trip({text: text}), {text: text})


@given(st.binary(max_size=300))
@settings(deadline=None, max_examples=200)
def test_round_trip_any_bytes(data):
    assert_same(round_trip(data), data)
    assert_same(round_trip(bytearray(data)), data)
    assert_same(round_trip(memoryview(data)), data)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -5,
        1.5,
        -0.0,
        math.inf,
        -math.inf,
        "",
        "abc",
        b"",
        b"\x00\xff",
        [],
        {},
        (),
        [[[]]],
        {"": {"": []}},
        dt.date(1, 1, 1),
        dt.date(9999, 12, 31),
        dt.datetime.min,
        dt.datetime.max,
        dt.time.min,
        dt.time.max,
        *BIG_INTS,
        *NASTY_TEXT,
        *NASTY_BYTES,
    ],
    ids=short_id,
)
def test_round_trip_examples(value):
    assert_same(round_trip(value), value)


@given(st.integers(4200, 6000), st.integers(), st.booleans())
@settings(deadline=None, max_examples=100)
def test_round_trip_ints_around_the_str_digits_limit(digits, offset, negative):
    value = 10**digits + offset
    if negative:
        value = -value
    assert_same(round_trip([value, {"k": value}]), [value, {"k": value}])


def test_round_trip_nan():
    got = round_trip([math.nan, -math.nan])
    assert all(type(v) is float and math.isnan(v) for v in got)


@pytest.mark.parametrize(
    "value", [2**400_000 + 12345, -(2**400_000), 10**200_000 - 1], ids=short_id
)
def test_round_trip_huge_ints(value):
    """Ints of any size travel, also beyond the hexadecimal digits cap of the reader."""
    assert_same(round_trip(value), value)


def test_all_bytes_and_latin1_text():
    everything = bytes(range(256))
    assert round_trip(everything) == everything
    text = everything.decode("latin-1")
    assert round_trip(text) == text


def test_wire_bytes_of_simple_values():
    assert json_dumps(5) == b'"i:5"'
    assert json_dumps(None) == b'"n:"'
    assert json_dumps([True, False]) == b'["b:1","b:0"]'
    assert json_dumps(1.5) == b'"f:1.5"'
    assert json_dumps("héllo") == b'"u:h\xc3\xa9llo"'
    assert json_dumps(b"\xff") == b'"y:\xff"'
    assert json_dumps({"a": (1,)}) == b'{"a":["i:1"]}'
    assert json_dumps({1: 2}) == b'{"1":"i:2"}'
    assert json_dumps(dt.date(2020, 1, 2)) == b'"D:2020,1,2"'
    assert json_dumps(dt.datetime(2020, 1, 1)) == b'"t:2020,1,1,0,0,0,0,"'
    assert json_dumps(dt.time(1, 2, 3, 4)) == b'"T:1,2,3,4,"'
    assert json_dumps('a"b\\c\n') == b'"u:a\\"b\\\\c\\n"'


def test_tuples_come_back_as_lists_and_keys_as_strings():
    value = {1: (1, 2), None: ((),), 1.5: "x", False: "f", (1, 2): "tuple", b"k": "bytes"}
    assert round_trip(value) == {
        "1": [1, 2],
        "None": [[]],
        "1.5": "x",
        "False": "f",
        "(1, 2)": "tuple",
        "b'k'": "bytes",
    }


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    HIGH = 3


class MyInt(int):
    pass


class MyStr(str):
    def __str__(self):
        return "not me"


class QuotedRepr:
    def __repr__(self):
        return 'Quoted("é\\\x00")'


@pytest.mark.parametrize(
    "value, expected",
    [
        (complex(1, 2), "(1+2j)"),
        ({1, 2}, "{1, 2}"),
        (frozenset(), "frozenset()"),
        (decimal.Decimal("1.5"), "Decimal('1.5')"),
        (fractions.Fraction(1, 3), "Fraction(1, 3)"),
        (range(3), "range(0, 3)"),
        (Ellipsis, "Ellipsis"),
        (int, "<class 'int'>"),
        (Color.RED, "<Color.RED: 1>"),
        (QuotedRepr(), 'Quoted("é\\\x00")'),
        (dt.timedelta(seconds=1), "datetime.timedelta(seconds=1)"),
    ],
)
def test_other_types_travel_as_their_repr(value, expected):
    assert json_dumps(value) == json_dumps(expected)
    assert round_trip([value]) == [expected]


@pytest.mark.parametrize(
    "value, expected",
    [
        (MyInt(7), 7),
        (Level.HIGH, 3),
        (MyStr("me"), "me"),
        (bytearray(b"ab"), b"ab"),
        (memoryview(b"ab"), b"ab"),
        (collections.OrderedDict(a=1), {"a": 1}),
        (collections.defaultdict(list, a=[1]), {"a": [1]}),
        (collections.namedtuple("P", "x y")(1, 2), [1, 2]),
    ],
)
def test_builtin_subclasses_travel_as_the_builtin(value, expected):
    got = round_trip(value)
    assert got == expected and type(got) is type(expected)


def unserializable_values():
    """A list that contains itself, a list nested 100,000 deep, a dict that contains itself
    under a key that is not str."""
    loop = []
    loop.append(loop)
    deep = []
    for _ in range(100_000):
        deep = [deep]
    nasty = {1: []}
    nasty[1].append(nasty)
    return [loop, deep, nasty]


def test_recursive_and_too_deep_values_raise_value_error():
    for value in unserializable_values():
        with pytest.raises(ValueError):
            json_dumps(value)


# ---------------------------------------------------------------------------- dates and zones


def paris(*args, is_dst=False):
    return pytz.timezone(PARIS).localize(dt.datetime(*args), is_dst=is_dst)


@pytest.mark.parametrize(
    "value",
    [
        paris(2020, 6, 1, 12),
        paris(2020, 1, 1, 12),
        paris(1850, 1, 1),  # local mean time
        pytz.timezone("Asia/Kolkata").localize(dt.datetime(2020, 1, 1, 12, 30, 15, 999999)),
        pytz.timezone("Pacific/Chatham").localize(dt.datetime(2021, 1, 1)),
        pytz.timezone("Australia/Lord_Howe").localize(dt.datetime(2021, 1, 1)),
        pytz.timezone("America/St_Johns").localize(dt.datetime(2021, 7, 1)),
        pytz.timezone("EST").localize(dt.datetime(2021, 7, 1)),
        pytz.utc.localize(dt.datetime(2020, 1, 1)),
        dt.datetime(2020, 6, 1, 12, tzinfo=zoneinfo.ZoneInfo(PARIS)),
        dt.datetime(1850, 1, 1, tzinfo=zoneinfo.ZoneInfo(PARIS)),  # offset +0:09:21
        dt.datetime(2020, 6, 1, tzinfo=zoneinfo.ZoneInfo("UTC")),
        dt.datetime(2020, 6, 1, tzinfo=UTC),
        dt.datetime(2020, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
        dt.datetime(2020, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=23, minutes=59))),
        dt.datetime(2020, 6, 1, tzinfo=dt.timezone(dt.timedelta(seconds=-1))),
        dt.datetime(2020, 6, 1, tzinfo=pytz.FixedOffset(-90)),
        dt.datetime(2, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=12))),
        dt.datetime(9999, 12, 30, 23, tzinfo=dt.timezone(dt.timedelta(hours=-12))),
    ],
    ids=str,
)
def test_aware_datetimes(value):
    assert_same(round_trip(value), value)


def test_utc_flavours_are_kept():
    naive = dt.datetime(2020, 1, 1)
    assert round_trip(naive.replace(tzinfo=UTC)).tzinfo is UTC
    assert round_trip(pytz.utc.localize(naive)).tzinfo is pytz.utc
    assert round_trip(naive.replace(tzinfo=zoneinfo.ZoneInfo("UTC"))).tzinfo is zoneinfo.ZoneInfo(
        "UTC"
    )


@pytest.mark.parametrize(
    "zone, wall", [(NEW_YORK, (2021, 11, 7, 1, 30)), (PARIS, (2021, 10, 31, 2, 30, 15, 7))]
)
def test_ambiguous_times_zoneinfo_fold(zone, wall):
    first = dt.datetime(*wall, tzinfo=zoneinfo.ZoneInfo(zone), fold=0)
    second = first.replace(fold=1)
    assert first.utcoffset() != second.utcoffset()
    got_first, got_second = round_trip([first, second])
    for got, want in ((got_first, first), (got_second, second)):
        assert_same(got, want)
        assert got.fold == want.fold
    assert instant(got_second) - instant(got_first) == dt.timedelta(hours=1)


@pytest.mark.parametrize(
    "zone, wall", [(NEW_YORK, (2021, 11, 7, 1, 30)), (PARIS, (2021, 10, 31, 2, 30, 15, 7))]
)
def test_ambiguous_times_pytz_is_dst(zone, wall):
    tz = pytz.timezone(zone)
    summer = tz.localize(dt.datetime(*wall), is_dst=True)
    winter = tz.localize(dt.datetime(*wall), is_dst=False)
    got_summer, got_winter = round_trip([summer, winter])
    assert_same(got_summer, summer)
    assert_same(got_winter, winter)
    assert got_summer.dst() and not got_winter.dst()
    assert instant(got_winter) - instant(got_summer) == dt.timedelta(hours=1)


def test_nonexistent_wall_times_keep_their_instant():
    """A wall time in a DST gap cannot be rebuilt; the instant is, normalized."""
    in_gap = dt.datetime(2021, 3, 28, 2, 30, tzinfo=zoneinfo.ZoneInfo(PARIS))
    got = round_trip(in_gap)
    assert instant(got) == instant(in_gap) and got.tzinfo is in_gap.tzinfo
    assert (got.hour, got.utcoffset()) == (3, dt.timedelta(hours=2))
    tz = pytz.timezone(PARIS)
    pytz_gap = tz.localize(dt.datetime(2021, 3, 28, 2, 30), is_dst=False)
    got = round_trip(pytz_gap)
    assert instant(got) == instant(pytz_gap) and got.tzinfo.zone == PARIS
    assert got.replace(tzinfo=None) == tz.normalize(pytz_gap).replace(tzinfo=None)


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(1, 1, 1, tzinfo=zoneinfo.ZoneInfo(PARIS)),
        dt.datetime(1, 1, 1, tzinfo=pytz.timezone("Asia/Tokyo")),  # LMT, +9:19
        dt.datetime.max.replace(tzinfo=zoneinfo.ZoneInfo(NEW_YORK)),
    ],
    ids=str,
)
def test_aware_datetime_extremes(value):
    """Aware datetimes whose UTC time falls outside datetime's range still travel."""
    assert_same(round_trip(value), value)


def zone_id(prefix, name):
    return int.from_bytes(prefix + name.encode("ascii"), "big")


@pytest.mark.parametrize(
    "zone_field",
    [str(zone_id(b"z", "Mars/Olympus_Mons")), str(zone_id(b"q", "Unknown/Kind")), "0", "00", ""],
    ids=["unknown-zoneinfo-key", "unknown-kind", "0", "00", "empty"],
)
def test_unknown_zones_fall_back_to_the_offset_sent(zone_field):
    """A zone this side does not know (other tzdata, other kind) arrives as the offset sent."""
    for offset in (3600, 7200, -3600, 0, 3600):
        payload = b'"t:2020,1,1,0,0,0,0,%d,%s,UTC"' % (offset, zone_field.encode())
        got = json_loads(payload)
        assert got.utcoffset() == dt.timedelta(seconds=offset), (payload, got)
        assert instant(got) == instant(dt.datetime(2020, 1, 1, tzinfo=UTC))


def test_zone_ids_of_known_zones():
    paris_zoneinfo = b'"t:2020,6,1,10,0,0,0,7200,%d,UTC"' % zone_id(b"z", PARIS)
    got = json_loads(paris_zoneinfo)
    assert got.tzinfo is zoneinfo.ZoneInfo(PARIS) and got.hour == 12
    paris_pytz = b'"t:2020,1,1,10,0,0,0,3600,%d,UTC"' % zone_id(b"p", PARIS)
    got = json_loads(paris_pytz)
    assert (
        got.tzinfo.zone == PARIS
        and got.hour == 11
        and got.tzinfo is got.tzinfo.normalize(got).tzinfo
    )
    with pytest.raises(ProtocolError):  # a pytz name pytz does not know
        json_loads(b'"t:2020,1,1,10,0,0,0,0,%d,UTC"' % zone_id(b"p", "Mars/Olympus_Mons"))


@pytest.mark.parametrize(
    "value",
    [
        dt.time(1, 2, 3, 4, tzinfo=UTC),
        dt.time(1, 2, 3, 4, tzinfo=pytz.utc),
        dt.time(23, 59, 59, 999999, tzinfo=pytz.timezone(PARIS)),
        dt.time(0, 0, tzinfo=pytz.timezone("EST")),
        dt.time(12, tzinfo=zoneinfo.ZoneInfo(PARIS)),
        dt.time(12, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        dt.time(12, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30, seconds=7))),
        dt.time(12, tzinfo=pytz.FixedOffset(90)),
    ],
    ids=str,
)
def test_aware_times(value):
    assert_same(round_trip(value), value)


@pytest.mark.parametrize("microseconds", [1, 1500, -999_999, 3_600_000_001])
def test_sub_second_fixed_offsets(microseconds):
    """datetime.timezone accepts offsets with microseconds: they travel too."""
    zone = dt.timezone(dt.timedelta(microseconds=microseconds))
    value = dt.datetime(2020, 1, 1, tzinfo=zone)
    assert_same(round_trip(value), value)
    assert_same(round_trip(value.timetz()), value.timetz())


@given(aware_datetimes)
@settings(deadline=None, max_examples=300)
def test_round_trip_aware_datetimes(value):
    assert_same(round_trip(value), value)


@given(st.datetimes(timezones=st.timezones(), allow_imaginary=False))
@settings(deadline=None, max_examples=200)
def test_round_trip_zoneinfo_keeps_fold(value):
    got = round_trip(value)
    assert instant(got) == instant(value) and got.utcoffset() == value.utcoffset()
    assert got.replace(tzinfo=None) == value.replace(tzinfo=None)
    if value.replace(fold=1 - value.fold).utcoffset() != value.utcoffset():  # ambiguous
        assert got.fold == value.fold


# -------------------------------------------------------------------- legacy (0.2.3) payloads


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b'"t:2020,1,1,0,0,0,0,"', dt.datetime(2020, 1, 1)),
        (b'"t:2020,1,1,0,0,0,0,3600,"', dt.datetime(2020, 1, 1)),  # extra fields: ignored
        (b'"t:2020,6,1,12,0,0,0,Europe/Paris"', paris(2020, 6, 1, 12)),
        (b'"t:2020,1,1,12,0,0,0,Europe/Paris"', paris(2020, 1, 1, 12)),
        (b'"t:2020,1,1,12,0,0,0,UTC"', pytz.utc.localize(dt.datetime(2020, 1, 1, 12))),
        (b'"T:1,2,3,4,"', dt.time(1, 2, 3, 4)),
        (b'"T:1,2,3,4,UTC"', dt.time(1, 2, 3, 4, tzinfo=pytz.utc)),
        (b'"T:1,2,3,4,Europe/Paris"', dt.time(1, 2, 3, 4, tzinfo=pytz.timezone(PARIS))),
        (b'"D:2020,1,2"', dt.date(2020, 1, 2)),
        (b'"Y:by\xfftes"', b"by\xfftes"),
        (b'"s:str"', b"str"),
        (b'"u:h\xc3\xa9llo"', "héllo"),
        (b'{"\xe9":"i:1"}', {"é": 1}),  # legacy writes Latin-1 keys
        (b'{"h\xc3\xa9":"i:1"}', {"hé": 1}),
        (b'"u:tab\tnewline\n"', "tab\tnewline\n"),  # legacy leaves control characters raw
        (b'"f:nan"', math.nan),
        (b'"f:-inf"', -math.inf),
        (b'"b:1"', True),
        (b'"n:"', None),
        (b'["i:1",["i:2","i:3"]]', [1, [2, 3]]),
    ],
)
def test_reads_legacy_payloads(payload, expected):
    assert_same(json_loads(payload), expected)


def test_accepts_str_bytearray_and_memoryview_input():
    assert json_loads('"u:h\xc3\xa9llo"') == "héllo"
    assert json_loads(bytearray(b'"i:5"')) == 5
    assert json_loads(memoryview(b'"i:5"')) == 5


def test_whitespace_around_the_document_is_accepted():
    for payload in (b'"n:" ', b' "n:"', b'\n\t "n:" \r\n', b' [ "i:1" , { "a" : "n:" } ] '):
        assert json_loads(payload) in (None, [1, {"a": None}])


# ----------------------------------------------------------------------------- bad payloads

MALFORMED = [
    b"",
    b" ",
    b"not json",
    b'"i:5',
    b'"i:5""n:"',
    b'["i:1"',
    b'{"a"}',
    b"\xff",
    # leaves that are not typed strings
    b"1",
    b"1.5",
    b"null",
    b"true",
    b'["i:1",2]',
    b'{"a":null}',
    b'[["n:",false]]',
    # unknown or truncated type codes
    b'""',
    b'"i"',
    b'"x:1"',
    b'"Z:"',
    b'"::"',
    b'":i:1"',
    b'"I:1"',
    b'{"k":"q:1"}',
    # bad scalar data
    b'"i:abc"',
    b'"i:1.5"',
    b'"i:"',
    b'"f:abc"',
    b'"f:"',
    b'"b:"',
    b'"b:yes"',
    # bad dates and times
    b'"t:2020,13,1,0,0,0,0,"',
    b'"t:2020,1,1"',
    b'"t:"',
    b'"t:2020,1,1,0,0,0,"',
    b'"t:a,b,c,d,e,f,g,"',
    b'"t:2020,1,1,25,0,0,0,"',
    b'"t:2020,1,1,0,0,0,1000000,"',
    b'"t:2020,1,1,0,0,0,0,No/Such_Zone"',
    b'"t:2020,1,1,0,0,0,0,Europe/Par\xeds"',
    b'"t:2020,1,1,0,0,0,0,90000,0,UTC"',  # offset beyond a day
    b'"t:2020,1,1,0,0,0,0,' + b"9" * 300 + b',0,UTC"',
    b'"t:2020,1,1,0,0,0,0,0,' + b"9" * 300 + b',UTC"',
    b'"t:' + b"1," * 300 + b'"',
    b'"t:99999,1,1,0,0,0,0,"',
    b'"t:9999,12,31,23,0,0,0,0,0,UTC",' + b'"t:0,1,1,0,0,0,0,0,0,UTC"',
    b'"t:9999,12,31,23,0,0,0,7200,0,UTC"',  # UTC fine, local time past year 9999
    b'"D:2020,2,30"',
    b'"D:2020,1"',
    b'"D:x,y,z"',
    b'"D:0,1,1"',
    b'"T:25,0,0,0,"',
    b'"T:1,2,3"',
    b'"T:1,2,3,4,No/Such_Zone"',
    b'"T:1,2,3,4,90000,0,"',
    b'"T:' + b"1," * 300 + b'"',
    # text leaves that are not UTF-8, bytes leaves above Latin-1
    b'"u:\xff"',
    b'"u:\xc3"',
    b'"u:\xc3\x28"',
    b'"u:\xe9t\xe9"',
    b'"u:\\u00e9"',
    b'"u:\\u20ac"',
    b'"y:\\u0100"',
    b'"Y:\\u20ac"',
    # nesting and sizes
    b"[" * 100_000,
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000,
    b'"i:' + b"9" * 5000 + b'"',
    b'"i:-' + b"9" * 100_000 + b'"',
    b'"i:0x"',
    b'"i:0xg"',
    b'"i:--0x1"',
    b'"i:' + b"9" * 1_000_000 + b'"',
]


@pytest.mark.parametrize("payload", MALFORMED, ids=lambda p: repr(p[:40]))
def test_malformed_payloads_raise_protocol_error(payload):
    with pytest.raises(ProtocolError):
        json_loads(payload)


def test_deep_nesting_is_refused_or_decoded():
    for depth in (10, 100, 500, 900, 2000, 50_000):
        payload = b"[" * depth + b'"n:"' + b"]" * depth
        try:
            value = json_loads(payload)
        except ProtocolError:
            assert depth > 100
            continue
        for _ in range(depth):
            assert type(value) is list and len(value) == 1
            value = value[0]
        assert value is None


@given(st.binary(max_size=200))
@settings(deadline=None, max_examples=500)
def test_random_bytes_raise_only_protocol_error(data):
    try:
        json_loads(data)
    except ProtocolError:
        pass


FIELDS = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "UTC",
            PARIS,
            "No/Zone",
            "1e5",
            "0x10",
            " 1",
            "9" * 30,
            str(int.from_bytes(b"pEurope/Paris", "big")),
            str(int.from_bytes(b"zEurope/Paris", "big")),
            str(int.from_bytes(b"z../../etc/passwd", "big")),
            str(int.from_bytes(b"z/etc/localtime", "big")),
            str(int.from_bytes(b"p", "big")),
            str(int.from_bytes(b"z", "big")),
            str(int.from_bytes(b"z.", "big")),
            str(int.from_bytes(b"z\x00", "big")),
            str(int.from_bytes(b"p\xe9", "big")),
        ]
    ),
    st.text(max_size=5),
)
typed_leaves = st.builds(
    lambda code, fields: code + ":" + ",".join(fields),
    st.sampled_from([*sorted(BUILTIN_CODES), "x", "", "tt"]),
    st.lists(FIELDS, max_size=11),
)
json_trees = st.recursive(
    typed_leaves | st.none() | st.integers() | st.booleans(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=6,
)


@given(json_trees)
@settings(deadline=None, max_examples=500)
def test_structured_garbage_raises_only_protocol_error(tree):
    text = json.dumps(tree, ensure_ascii=False)
    for payload in (text.encode("utf-8"), text.encode("utf-8").decode("latin-1")):
        try:
            json_loads(payload)
        except ProtocolError:
            pass


# ------------------------------------------------------------------------------------ Message


def test_message_raw_and_lazy_decoding(monkeypatch):
    calls = []
    real_loads = hein.core.json_loads

    def counting_loads(data):
        calls.append(data)
        return real_loads(data)

    monkeypatch.setattr(hein.core, "json_loads", counting_loads)
    payload = json_dumps({"a": [1, "é"]})
    message = Message(bytearray(payload))
    assert message.raw == payload and type(message.raw) is bytes
    assert calls == []  # lazy
    assert message.message == {"a": [1, "é"]}
    assert message.message is message.message
    assert len(calls) == 1  # decoded once
    none = Message(b'"n:"')
    assert none.message is None and none.message is None
    assert len(calls) == 2  # None is cached too


def test_message_str_repr_eq_hash():
    message = Message(json_dumps(["é", 1]))
    assert str(message) == str(["é", 1])
    assert repr(message) == repr(["é", 1])
    assert message == Message(json_dumps(["é", 1]))
    assert message != Message(json_dumps(["é", 2]))
    assert hash(message) == hash(Message(json_dumps(["é", 1])))
    assert str(Message(b'"u:text"')) == "text"
    assert repr(Message(b'"u:text"')) == "'text'"


def test_message_undecodable():
    message = Message(b"garbage")  # no error until decoded
    with pytest.raises(ProtocolError):
        _ = message.message
    with pytest.raises(ProtocolError):
        _ = message.message
    assert "garbage" in repr(message)
    assert "garbage" in str(message)


# --------------------------------------------------------------------------------- custom types


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int
    name: str = ""


def encode_point(point):
    return "%d,%d,%s" % (point.x, point.y, point.name)


def decode_point(text):
    x, y, name = text.split(",", 2)
    return Point(int(x), int(y), name)


@pytest.fixture
def registered():
    """Register types for one test; unregister them afterwards whatever happens."""
    done = []

    def register(cls, code, encode, decode):
        done.append(cls)
        register_type(cls, code, encode, decode)

    try:
        yield register
    finally:
        for cls in done:
            unregister_type(cls)


def test_register_decimal_uuid_dataclass(registered):
    registered(decimal.Decimal, "d", str, decimal.Decimal)
    registered(uuid.UUID, "U", str, uuid.UUID)
    registered(Point, "P", encode_point, decode_point)
    value = {
        "price": decimal.Decimal("-1.50"),
        "id": uuid.UUID(int=12345),
        "points": [Point(1, 2, 'é"\\,'), (Point(-3, 4),)],
        "plain": [1, "x"],
    }
    payload = json_dumps(value)
    assert b'"d:-1.50"' in payload and b'"U:00000000-0000-0000-0000-000000003039"' in payload
    got = json_loads(payload)
    assert got == {
        "price": decimal.Decimal("-1.50"),
        "id": uuid.UUID(int=12345),
        "points": [Point(1, 2, 'é"\\,'), [Point(-3, 4)]],
        "plain": [1, "x"],
    }
    assert type(got["price"]) is decimal.Decimal and str(got["price"]) == "-1.50"


def test_registered_subclass_uses_the_code(registered):
    class Special(Point):
        pass

    registered(Point, "P", encode_point, decode_point)
    assert json_loads(json_dumps(Special(1, 2))) == Point(1, 2)


def test_register_after_use_and_unregister_reset_the_encoding(registered):
    assert json_loads(json_dumps(Point(1, 2))) == "Point(x=1, y=2, name='')"  # repr
    assert json_loads(json_dumps(decimal.Decimal(3))) == "Decimal('3')"
    registered(Point, "P", encode_point, decode_point)
    assert json_loads(json_dumps(Point(1, 2))) == Point(1, 2)
    unregister_type(Point)
    assert json_loads(json_dumps(Point(1, 2))) == "Point(x=1, y=2, name='')"
    with pytest.raises(ProtocolError):
        json_loads(b'"P:1,2,"')
    unregister_type(Point)  # no error the second time


def test_unknown_custom_code_raises_protocol_error():
    for code in "dUPqQ":
        with pytest.raises(ProtocolError):
            json_loads(b'"%s:1"' % code.encode())


@pytest.mark.parametrize("code", sorted(BUILTIN_CODES))
def test_builtin_codes_refused(code):
    assert BUILTIN_CODES == frozenset("bifnuyYstDT")
    try:
        with pytest.raises(ValueError):
            register_type(Point, code, encode_point, decode_point)
    finally:
        unregister_type(Point)
    assert json_loads(json_dumps(Point(1, 2))) == "Point(x=1, y=2, name='')"


@pytest.mark.parametrize("code", ["", "ab", "PP", ":", '"', "\\", "\n", "\x00", 5, None])
def test_bad_codes_refused(code):
    try:
        with pytest.raises((ValueError, TypeError)):
            register_type(Point, code, encode_point, decode_point)
    finally:
        unregister_type(Point)


@pytest.mark.parametrize(
    "cls",
    [int, str, bytes, float, bool, list, dict, tuple, type(None), dt.datetime, dt.date, dt.time],
)
def test_builtin_types_refused(cls):
    try:
        with pytest.raises(ValueError):
            register_type(cls, "q", str, str)
    finally:
        unregister_type(cls)
    assert json_loads(json_dumps([1, "a"])) == [1, "a"]


def test_bad_arguments_refused():
    try:
        with pytest.raises(TypeError):
            register_type(Point(1, 2), "q", str, str)
        with pytest.raises(TypeError):
            register_type(Point, "q", "not callable", str)
        with pytest.raises(TypeError):
            register_type(Point, "q", str, None)
    finally:
        unregister_type(Point)


def test_duplicate_code_refused(registered):
    registered(decimal.Decimal, "d", str, decimal.Decimal)
    try:
        with pytest.raises(ValueError):
            register_type(Point, "d", encode_point, decode_point)
    finally:
        unregister_type(Point)
    assert json_loads(json_dumps(decimal.Decimal(1))) == decimal.Decimal(1)


def test_reregistering_a_class_under_another_code_forgets_the_old_one(registered):
    registered(Point, "P", encode_point, decode_point)
    registered(Point, "Q", encode_point, decode_point)
    assert json_dumps(Point(1, 2)) == b'"Q:1,2,"'
    unregister_type(Point)
    for payload in (b'"P:1,2,"', b'"Q:1,2,"'):
        with pytest.raises(ProtocolError):
            json_loads(payload)


@pytest.mark.parametrize("code", ["é", "€", "😀", "ÿ"])
def test_non_ascii_codes_work_or_are_refused(code):
    """A code that register_type accepts must work on the wire."""
    try:
        try:
            register_type(Point, code, encode_point, decode_point)
        except ValueError:
            return
        assert json_loads(json_dumps([Point(1, 2)])) == [Point(1, 2)]
    finally:
        unregister_type(Point)


def test_failing_custom_decoder_raises_protocol_error(registered):
    def bad_decode(text):
        raise RuntimeError("no")

    registered(Point, "P", encode_point, bad_decode)
    with pytest.raises(ProtocolError):
        json_loads(json_dumps(Point(1, 2)))
    with pytest.raises(ProtocolError):
        json_loads(b'"P:\xff"')  # not UTF-8


def test_custom_encoder_must_return_str(registered):
    registered(Point, "P", lambda point: point.x, decode_point)
    with pytest.raises(TypeError):
        json_dumps(Point(1, 2))


def test_json_loads_many_decodes_a_batch_and_isolates_bad_payloads():
    from hein._serializer import DecodeFailure, json_loads_many

    values = [{"i": i, "t": dt.datetime(2020, 1, 1, i, tzinfo=UTC)} for i in range(5)]
    payloads = [json_dumps(v) for v in values]
    assert json_loads_many(payloads) == values
    assert json_loads_many(payloads[:1]) == values[:1]
    broken = [*payloads[:2], b'{"x": "q:unknown"}', b"[not json", *payloads[2:]]
    got = json_loads_many(broken)
    assert [g for g in got if type(g) is not DecodeFailure] == values
    assert [type(g) is DecodeFailure for g in got] == [
        False,
        False,
        True,
        True,
        False,
        False,
        False,
    ]
    assert all(isinstance(g.error, ProtocolError) for g in got if type(g) is DecodeFailure)
    # payloads that are only valid JSON together are still refused one by one
    assert [type(g) for g in json_loads_many([b'"u:a",', b'"u:b"'])] == [DecodeFailure, str]

"""Interoperability of our extended JSON with hein 0.2.3's, run in its own environment.

(a) our ``json_loads`` reads what the legacy ``json_dumps`` writes, wherever the legacy writer is
    correct, and reads the *intended* value (pytz-aware datetimes: the wall time localized in the
    zone; non-ASCII text: the text itself, not the legacy receiver's mojibake);
(b) the legacy ``json_loads`` reads everything our ``json_dumps`` writes without raising, and gets
    the right value wherever its bugs allow (PROTOCOL.md, "Legacy bugs").
"""

import datetime as dt
import decimal
import math
import os
import zoneinfo

import pytest
import pytz
from hypothesis import given, settings
from hypothesis import strategies as st
from legacy import REPO_ROOT, LegacyCodec, LegacyCodecError

from hein import json_dumps, json_loads

pytestmark = pytest.mark.legacy

UTC = dt.timezone.utc
PARIS = pytz.timezone("Europe/Paris")
NEW_YORK = pytz.timezone("America/New_York")


@pytest.fixture(scope="module")
def legacy():
    codec = LegacyCodec()
    try:
        yield codec
    finally:
        codec.close()


def ids(value):
    if isinstance(value, int) and abs(value).bit_length() > 64:
        return "int-%d-bits" % value.bit_length()
    return repr(value)[:50]


# ------------------------------------------------------------------------------ comparisons


def assert_equal(got, want, path="value"):
    """Exact types and values; floats by bits (nan equal to nan); aware values by zone too."""
    assert type(got) is type(want), "%s: %r is not %r" % (path, got, want)
    if isinstance(want, list):
        assert len(got) == len(want), path
        for index, (item, wanted) in enumerate(zip(got, want)):
            assert_equal(item, wanted, "%s[%d]" % (path, index))
    elif isinstance(want, dict):
        assert list(got) == list(want), path
        for key in want:
            assert_equal(got[key], want[key], "%s[%r]" % (path, key))
    elif isinstance(want, float):
        if math.isnan(want):
            assert math.isnan(got), path
        else:
            assert got == want and math.copysign(1, got) == math.copysign(1, want), path
    elif isinstance(want, (dt.datetime, dt.time)):
        assert got.replace(tzinfo=None) == want.replace(tzinfo=None), (path, got, want)
        assert got.tzinfo is want.tzinfo, (path, got.tzinfo, want.tzinfo)
    else:
        assert got == want, (path, got, want)


# ------------------------------------------------------------------- (a) legacy writes, we read


def paris(*args, is_dst=False):
    return PARIS.localize(dt.datetime(*args), is_dst=is_dst)


ASCII_TEXT = [
    "",
    "hello",
    "with space",
    "tab\tnewline\ncr\r",
    "\x00\x01\x1f\x7f",
    "u:i:5",
    "comma,colon:semicolon;",
    "'single'",
    "{}[]",
    "a" * 10_000,
    "".join(chr(c) for c in range(128) if chr(c) not in '"\\'),
]
NON_ASCII_TEXT = [
    "héllo",
    "日本語",
    "emoji 😀",
    "\xac\x96",
    "\xac\x96\xac\x96",
    "\xee",
    "\u2028",
    "ÿ" * 100,
    "".join(chr(c) for c in range(128, 1000)),
]
LEGACY_OK_BYTES = [
    b"",
    b"bytes",
    b"\x00\xff",
    b"\xac\x96\xac\x96",
    b"\xc3\xa9",
    bytes(c for c in range(256) if c not in b'"\\'),
]
NUMBERS = [
    0,
    1,
    -1,
    2**63,
    -(2**64),
    10**100,
    10**4299,
    1.5,
    -0.0,
    0.1,
    1e308,
    5e-324,
    math.inf,
    -math.inf,
    math.nan,
]
DATES = [
    dt.date(1, 1, 1),
    dt.date(2020, 2, 29),
    dt.date(9999, 12, 31),
    dt.datetime(2020, 1, 1),
    dt.datetime(1, 1, 1),
    dt.datetime.max,
    dt.datetime(2021, 6, 15, 12, 30, 45, 123456),
    dt.time(0, 0),
    dt.time(23, 59, 59, 999999),
    dt.time(12, 30, 1, 2),
]

LEGACY_WRITES_CORRECTLY = (
    ASCII_TEXT
    + NON_ASCII_TEXT
    + LEGACY_OK_BYTES
    + NUMBERS
    + DATES
    + [
        None,
        True,
        False,
        [],
        {},
        (),
        [1, [2, (3, "x")]],
        {"a": {"b": [None, 1.5]}},
        {"k" * 50: b"v", "": ""},
    ]
)


def normalized(value):
    """What a round trip gives for ``value`` when nothing is lost (tuples become lists...)."""
    if isinstance(value, (list, tuple)):
        return [normalized(item) for item in value]
    if isinstance(value, dict):
        return {str(key): normalized(item) for key, item in value.items()}
    return value


@pytest.mark.parametrize("value", LEGACY_WRITES_CORRECTLY, ids=ids)
def test_we_read_what_legacy_writes(legacy, value):
    assert_equal(json_loads(legacy.dumps(value)), normalized(value))


def test_we_read_what_legacy_writes_all_at_once(legacy):
    value = [LEGACY_WRITES_CORRECTLY, {"nested": LEGACY_WRITES_CORRECTLY}]
    assert_equal(json_loads(legacy.dumps(value)), normalized(value))


@pytest.mark.parametrize(
    "value",
    [
        paris(2020, 6, 1, 12),
        paris(2020, 1, 1, 12, 0, 0, 1),
        paris(1850, 1, 1),
        paris(2021, 10, 31, 2, 30),  # ambiguous: legacy loses is_dst; localize picks winter
        NEW_YORK.localize(dt.datetime(2021, 7, 4, 23, 59, 59)),
        pytz.timezone("Asia/Kolkata").localize(dt.datetime(2020, 1, 1, 12)),
        pytz.timezone("Australia/Lord_Howe").localize(dt.datetime(2021, 1, 1, 1, 45)),
        pytz.timezone("EST").localize(dt.datetime(2021, 7, 1)),
        pytz.utc.localize(dt.datetime(2020, 1, 1)),
    ],
    ids=str,
)
def test_we_read_legacy_pytz_datetimes_as_intended(legacy, value):
    """Legacy writes the local wall time and the zone name: we localize that wall time."""
    payload = legacy.dumps(value)
    assert payload.endswith((',%s"' % value.tzinfo.zone).encode())
    got = json_loads(payload)
    zone = pytz.timezone(value.tzinfo.zone)
    intended = zone.localize(value.replace(tzinfo=None))
    assert_equal(got, intended)
    assert got == intended and got.utcoffset() == intended.utcoffset()
    wall = value.replace(tzinfo=None)
    if zone.localize(wall, is_dst=True) == zone.localize(wall, is_dst=False):  # not ambiguous
        assert got == value and got.tzinfo is value.tzinfo


@pytest.mark.parametrize(
    "value",
    [dt.time(1, 2, 3, 4, tzinfo=pytz.utc), dt.time(12, tzinfo=pytz.timezone("Europe/Paris"))],
    ids=str,
)
def test_we_read_legacy_pytz_times(legacy, value):
    got = json_loads(legacy.dumps(value))
    assert got.replace(tzinfo=None) == value.replace(tzinfo=None)
    assert got.tzinfo.zone == value.tzinfo.zone


def test_non_ascii_keys(legacy):
    """Legacy writes a key as its Latin-1 bytes and reads ours as mojibake (bug 2); we read both."""
    value = {"é": "latin-1 key", "ÿ\x80": 1}
    assert legacy.dumps(value) == b'{"\xe9":"u:latin-1 key","\xff\x80":"i:1"}'
    assert json_loads(legacy.dumps(value)) == value
    assert json_loads(json_dumps(value)) == value
    assert legacy.loads(json_dumps(value)) == {"Ã©": "latin-1 key", "Ã¿\xc2\x80": 1}


def test_legacy_writes_int_keys_as_one_byte(legacy):
    """Legacy bug 3, as seen by our reader: the key is lost, the rest of the payload is read."""
    assert json_loads(legacy.dumps({1: "a", "b": 2})) == {"\x01": "a", "b": 2}


# ----------------------------------------------------------------- (b) we write, legacy reads


class QuotedRepr:
    def __repr__(self):
        return "Q(\"é\", '\\')"

    def __reduce__(self):  # travels to the legacy process as its repr
        return (str, (repr(self),))


SPECIAL_TEXT = [
    '"',
    "\\",
    'a"b\\c',
    '\\"',
    '"\\',
    "\\u00e9",
    "\\n",
    '{"u:1": "x"}',
    "\x00",
    "".join(chr(c) for c in range(32)),
    "\x7f",
    '"' * 100,
    "\\" * 101,
]
SPECIAL_BYTES = [
    b'"',
    b"\\",
    b'a"b\\c',
    b"\\u00e9",
    b"\x00\x1f",
    bytes(range(256)),
    b'"' * 100 + b"\\" * 101,
]
ZONED = [
    paris(2020, 6, 1, 12),
    paris(2020, 1, 1, 12, 0, 0, 1),
    paris(2021, 10, 31, 2, 30, is_dst=True),
    paris(2021, 10, 31, 2, 30, is_dst=False),
    paris(1850, 1, 1),
    NEW_YORK.localize(dt.datetime(2021, 11, 7, 1, 30), is_dst=True),
    pytz.timezone("Asia/Kolkata").localize(dt.datetime(2020, 1, 1, 12)),
    pytz.timezone("Pacific/Chatham").localize(dt.datetime(2020, 1, 1, 12)),
    pytz.timezone("EST").localize(dt.datetime(2021, 7, 1)),
    pytz.utc.localize(dt.datetime(2020, 1, 1)),
    dt.datetime(2020, 6, 1, 12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
    dt.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("America/New_York")),
    dt.datetime(1850, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
    dt.datetime(2020, 6, 1, tzinfo=zoneinfo.ZoneInfo("America/Argentina/ComodRivadavia")),
    dt.datetime(2020, 6, 1, tzinfo=zoneinfo.ZoneInfo("UTC")),
    dt.datetime(2020, 6, 1, tzinfo=UTC),
    dt.datetime(2020, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(2020, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3, seconds=-7))),
    dt.datetime(2020, 6, 1, tzinfo=dt.timezone(dt.timedelta(hours=23, minutes=59), "named")),
    dt.datetime(2020, 6, 1, tzinfo=pytz.FixedOffset(-90)),
    dt.datetime(2, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
]
ZONED_TIMES = [
    dt.time(1, 2, 3, 4, tzinfo=UTC),
    dt.time(1, 2, 3, 4, tzinfo=pytz.utc),
    dt.time(23, 59, 59, 999999, tzinfo=pytz.timezone("Europe/Paris")),
    dt.time(0, tzinfo=pytz.timezone("EST")),
    dt.time(12, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
    dt.time(12, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    dt.time(12, tzinfo=pytz.FixedOffset(90)),
]
OTHERS = [
    {1: "int key", 2: [1]},
    {None: 1, 1.5: 2, (1, 2): 3, "é": 4},
    complex(1, 2),
    {1, 2},
    decimal.Decimal("1.5"),
    QuotedRepr(),
]

OURS = (
    LEGACY_WRITES_CORRECTLY
    + SPECIAL_TEXT
    + SPECIAL_BYTES
    + ZONED
    + ZONED_TIMES
    + OTHERS
    + ["\ud800", "a\udfffb", {'clé"\\': "välue"}]
)


def legacy_view(value):
    """What the legacy reader must get for what we write ``value`` as (PROTOCOL.md, legacy bugs).

    Text (values and keys) arrives as the Latin-1 reading of its UTF-8 bytes (bug 2); aware
    datetimes arrive in pytz's UTC, the same instant; times keep their wall time and, for pytz
    zones, the zone (anything else arrives naive); other types arrive as the text of their repr.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("latin-1")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (bool, int, float, type(None), dt.date)) and not isinstance(
        value, dt.datetime
    ):
        return value
    if isinstance(value, (list, tuple)):
        return [legacy_view(item) for item in value]
    if isinstance(value, dict):
        return {legacy_view(str(key)): legacy_view(item) for key, item in value.items()}
    if isinstance(value, dt.datetime):
        if value.utcoffset() is None:
            return value
        return (value.replace(tzinfo=None) - value.utcoffset()).replace(tzinfo=pytz.utc)
    if isinstance(value, dt.time):
        zone = getattr(value.tzinfo, "zone", None)
        if isinstance(zone, str) and zone in pytz.all_timezones_set:
            return value.replace(tzinfo=pytz.timezone(zone))
        return value.replace(tzinfo=None)
    return legacy_view(repr(value))


@pytest.mark.parametrize("value", OURS, ids=ids)
def test_legacy_reads_what_we_write(legacy, value):
    payload = json_dumps(value)
    try:
        got = legacy.loads(payload)
    except LegacyCodecError as error:
        pytest.fail("hein 0.2.3 cannot read %r: %s" % (payload[:200], error))
    assert_equal(got, legacy_view(value))


def test_legacy_reads_what_we_write_all_at_once(legacy):
    value = {"all": OURS, "nested": [OURS, tuple(OURS)]}
    assert_equal(legacy.loads(json_dumps(value)), legacy_view(value))


@pytest.mark.parametrize("value", ZONED, ids=str)
def test_legacy_reads_our_aware_datetimes_at_the_same_instant(legacy, value):
    got = legacy.loads(json_dumps(value))
    assert got.tzinfo is pytz.utc
    # the same instant (== is always false across zones for the second of two ambiguous times)
    assert got.replace(tzinfo=None) == value.replace(tzinfo=None) - value.utcoffset()
    assert got == value.astimezone(UTC)


def test_legacy_reads_non_ascii_text_as_mojibake(legacy):
    """Legacy bug 2, exactly: the Latin-1 reading of the UTF-8 bytes."""
    assert legacy.loads(json_dumps("héllo")) == "hÃ©llo"
    assert legacy.loads(json_dumps({"clé": "€"})) == {"clÃ©": "â\x82¬"}


@given(st.text(st.characters(exclude_categories=()) | st.sampled_from('"\\\x00\xac\x96')))
@settings(deadline=None, max_examples=100)
def test_legacy_reads_any_text_we_write(legacy, text):
    assert legacy.loads(json_dumps([text, {text: text}])) == [
        legacy_view(text),
        {legacy_view(text): legacy_view(text)},
    ]


@given(st.binary())
@settings(deadline=None, max_examples=100)
def test_legacy_reads_any_bytes_we_write(legacy, data):
    got = legacy.loads(json_dumps(data))
    assert type(got) is bytes and got == data


# --------------------------------------------------------------------------- both directions


@pytest.mark.parametrize("value", LEGACY_WRITES_CORRECTLY, ids=ids)
def test_legacy_writes_like_us(legacy, value):
    """For what both write correctly, legacy and we read each other's payloads the same way."""
    ours = json_dumps(value)
    theirs = legacy.dumps(value)
    assert_equal(json_loads(theirs), json_loads(ours))
    assert_equal(legacy.loads(ours), legacy.loads(theirs))


# ------------------------------------------------------------------------------ the harness


def test_codec_server_runs_the_legacy_hein(legacy):
    assert legacy.info["version"] == "0.2.3"
    assert "site-packages" in legacy.info["hein_file"]
    assert not legacy.info["hein_file"].startswith(str(REPO_ROOT / "hein"))


def test_codec_reports_legacy_errors_and_closes():
    codec = LegacyCodec()
    try:
        pid = codec.pid
        with pytest.raises(LegacyCodecError, match="JSONDecodeError"):
            codec.loads(b"not json")
        # legacy bug 1: it writes a quote unescaped, and cannot read it back
        with pytest.raises(LegacyCodecError):
            codec.loads(codec.dumps('a"b'))
        assert codec.loads(b'"i:5"') == 5  # still serving
    finally:
        codec.close()
    codec.close()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped
    with pytest.raises(RuntimeError):
        codec.loads(b'"i:5"')

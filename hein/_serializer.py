"""The extended JSON of hein: Python values to bytes and back, with their types.

Sans-I/O. A payload is a JSON document over the Latin-1 view of its bytes: containers are JSON
arrays (list, tuple) and objects (dict, keys as ``str(key)``), and every leaf is a JSON string
``"C:DATA"`` where ``C`` is a one-letter type code (see ``PROTOCOL.rst``). Text leaves carry UTF-8,
bytes leaves carry the bytes themselves, each byte one Latin-1 character of the JSON text.

Strategy: encoding walks the value once with a dispatch dict keyed by exact type (falling back
to ``isinstance`` for subclasses), building a tree of plain str/list/dict that the C JSON encoder
then writes in one call. Decoding runs the C JSON scanner once and walks the result, again with
a dispatch dict keyed by the two leading characters of each leaf. Every failure on decode is a
:class:`~hein.errors.ProtocolError`.

Aware datetimes travel as the UTC wall time, the UTC offset in seconds, a zone id (an integer
holding ``b"p" + pytz name`` or ``b"z" + zoneinfo key``, or 0 for a fixed offset) and the zone
``UTC``: 0.2.3 readers use the first seven fields and the last one, so they read the right
instant in UTC; hein readers rebuild the same zone.
"""

import datetime as _dt
import json
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytz

from .errors import ProtocolError

try:  # Python 3.9+
    import zoneinfo as _zoneinfo
except ImportError:  # pragma: no cover
    _zoneinfo = None  # type: ignore[assignment]

__all__ = ["json_dumps", "json_loads", "register_type", "unregister_type", "BUILTIN_CODES"]

_datetime = _dt.datetime
_date = _dt.date
_time = _dt.time
_timedelta = _dt.timedelta
_timezone = _dt.timezone
_UTC = _timezone.utc
_PYTZ_UTC = pytz.utc
_ONE_SECOND = _timedelta(seconds=1)
_ONE_MICROSECOND = _timedelta(microseconds=1)

#: Type codes of the legacy protocol; custom types cannot use them.
BUILTIN_CODES = frozenset("bifnuyYstDT")

# Longest zone id accepted from the network, in decimal digits (zone names are short).
_MAX_ZONE_ID_DIGITS = 200

_JSON_ENCODER = json.JSONEncoder(
    ensure_ascii=False, check_circular=False, separators=(",", ":"), allow_nan=False
)
try:  # the C encoder, made once (JSONEncoder.encode makes one per call)
    from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
    from json.encoder import encode_basestring as _encode_basestring

    _C_ENCODE = (
        _c_make_encoder(
            None, _JSON_ENCODER.default, _encode_basestring, None, ":", ",", False, False, False
        )
        if _c_make_encoder is not None
        else None
    )
except ImportError:  # pragma: no cover - not CPython
    _C_ENCODE = None


def _json_encode(tree: Any) -> str:
    if type(tree) is str:
        return _encode_basestring(tree)
    if _C_ENCODE is not None:
        return "".join(_C_ENCODE(tree, 0))
    return _JSON_ENCODER.encode(tree)  # pragma: no cover


_JSON_DECODER = json.JSONDecoder(strict=False)
_WHITESPACE = " \t\r\n"
_JSON_SCAN = _JSON_DECODER.scan_once  # type: ignore[attr-defined]

# ----------------------------------------------------------------------------------- encoding


def _text(value: str) -> str:
    """The Latin-1 view of the UTF-8 bytes of ``value`` (lone surrogates survive)."""
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogatepass").decode("latin-1")


def _enc_str(value: str) -> str:
    if value.isascii():
        return "u:" + value
    return "u:" + value.encode("utf-8", "surrogatepass").decode("latin-1")


def _enc_bytes(value: bytes) -> str:
    return "y:" + bytes(value).decode("latin-1")


def _enc_int(value: int) -> str:
    try:
        return "i:%d" % value
    except ValueError:  # more digits than int's str limit: hexadecimal, read back by hein only
        return "i:%#x" % value


def _enc_float(value: float) -> str:
    return "f:" + float.__repr__(value)


def _enc_bool(value: bool) -> str:
    return "b:1" if value else "b:0"


def _enc_none(value: None) -> str:
    return "n:"


def _enc_list(value: Any) -> List[Any]:
    return [_encode(item) for item in value]


def _enc_dict(value: Dict[Any, Any]) -> Dict[str, Any]:
    out = {}
    encoders = _ENCODERS
    for key, item in value.items():
        encoder = encoders.get(type(item))
        if encoder is None:
            encoder = _encoder_for(type(item))
        if type(key) is not str or not key.isascii():
            key = _text(str(key))
        out[key] = encoder(item)
    return out


def _zone_id(tzinfo: Any) -> int:
    """The integer naming ``tzinfo``'s zone, or 0 for a fixed offset."""
    zone = getattr(tzinfo, "zone", None)  # pytz
    if isinstance(zone, str) and zone in pytz.all_timezones_set:
        return int.from_bytes(b"p" + zone.encode("ascii"), "big")
    key = getattr(tzinfo, "key", None)  # zoneinfo
    if _zoneinfo is not None and isinstance(tzinfo, _zoneinfo.ZoneInfo) and isinstance(key, str):
        try:
            return int.from_bytes(b"z" + key.encode("ascii"), "big")
        except UnicodeEncodeError:
            return 0
    return 0


_zone_ids: Dict[Any, int] = {}
_UTC_ZONES = (_UTC, _PYTZ_UTC)


def _cached_zone_id(tzinfo: Any) -> int:
    try:
        return _zone_ids[tzinfo]
    except KeyError:
        pass
    except TypeError:  # an unhashable tzinfo
        return _zone_id(tzinfo)
    zone_id = _zone_id(tzinfo)
    if len(_zone_ids) >= 4096:
        _zone_ids.clear()
    _zone_ids[tzinfo] = zone_id
    return zone_id


def _datetime_parts(value: _datetime) -> Tuple[Tuple[int, ...], Optional[int], int, bool]:
    """How a datetime travels (in both encodings): the fields of its wall time (year to
    microsecond), its UTC offset in microseconds (None: naive), its zone id, and whether that
    wall time is the local one.

    An aware value travels as its UTC wall time, unless that is out of datetime's range: then
    as its local wall time.
    """
    tzinfo = value.tzinfo
    offset = None
    zone_id = 0
    local = False
    wall = value
    if tzinfo is _UTC or tzinfo is _PYTZ_UTC:
        offset = 0
        zone_id = _cached_zone_id(tzinfo)
    elif tzinfo is not None:
        delta = value.utcoffset()
        if delta is None:  # a tzinfo that knows no offset: the value is naive after all
            pass
        else:
            offset = delta // _ONE_MICROSECOND
            zone_id = _cached_zone_id(tzinfo)
            try:
                wall = value.replace(tzinfo=None) - delta
            except OverflowError:  # the UTC wall time is out of range: the local one
                local = True
    fields = (
        wall.year,
        wall.month,
        wall.day,
        wall.hour,
        wall.minute,
        wall.second,
        wall.microsecond,
    )
    return fields, offset, zone_id, local


def _enc_datetime(value: _datetime) -> str:
    fields, offset, zone_id, local = _datetime_parts(value)
    if offset is None:
        return "t:%d,%d,%d,%d,%d,%d,%d," % fields
    seconds, micros = divmod(offset, 1_000_000)
    text = "t:%d,%d,%d,%d,%d,%d,%d,%d,%d" % (*fields, seconds, zone_id)
    zone = "" if local else "UTC"
    if micros:
        return "%s,%d,%s" % (text, micros, zone)
    return text + "," + zone


def _enc_date(value: _date) -> str:
    return "D:%d,%d,%d" % (value.year, value.month, value.day)


def _enc_time(value: _time) -> str:
    tzinfo = value.tzinfo
    fields = "%d,%d,%d,%d" % (value.hour, value.minute, value.second, value.microsecond)
    if tzinfo is None:
        return "T:" + fields + ","
    offset = value.utcoffset()
    seconds, micros = divmod(0 if offset is None else offset // _ONE_MICROSECOND, 1_000_000)
    zone = getattr(tzinfo, "zone", None)
    name = zone if isinstance(zone, str) and zone in pytz.all_timezones_set else ""
    if micros:
        return "T:%s,%d,%d,%d,%s" % (fields, seconds, _zone_id(tzinfo), micros, name)
    return "T:%s,%d,%d,%s" % (fields, seconds, _zone_id(tzinfo), name)


def _enc_repr(value: Any) -> str:
    return _enc_str(repr(value))


_ENCODERS: Dict[type, Callable[[Any], Any]] = {
    str: _enc_str,
    int: _enc_int,
    float: _enc_float,
    bool: _enc_bool,
    type(None): _enc_none,
    bytes: _enc_bytes,
    list: _enc_list,
    tuple: _enc_list,
    dict: _enc_dict,
    _datetime: _enc_datetime,
    _date: _enc_date,
    _time: _enc_time,
}
# The built-in encoders; subclasses of these types use them too (in this order: bool before
# int, datetime before date).
_BUILTIN_ENCODERS = list(_ENCODERS.items())
_BUILTIN_ENCODERS.sort(key=lambda item: (item[0] is not bool, item[0] is not _datetime))
_BUILTIN_ENCODERS.insert(0, (bytearray, _enc_bytes))
_BUILTIN_ENCODERS.insert(0, (memoryview, _enc_bytes))
# Custom types (register_type): class -> (code, encode)
_CUSTOM: Dict[type, Tuple[str, Callable[[Any], str]]] = {}
# Whether a custom type is a subclass of a type JSON writes natively (the compact encoding then
# walks every value in Python, see _compact.py)
_CUSTOM_NATIVE = False
_MAX_CACHED_TYPES = 1024


def _encoder_for(cls: type) -> Callable[[Any], Any]:
    """Find (and cache) the encoder of a type that is not one of the exact built-in types."""
    encoder: Optional[Callable[[Any], Any]] = None
    for base in cls.__mro__:
        custom = _CUSTOM.get(base)
        if custom is not None:
            encoder = _custom_encoder(*custom)
            break
    if encoder is None:
        for base_type, builtin in _BUILTIN_ENCODERS:
            if issubclass(cls, base_type):
                encoder = builtin
                if base_type is int:
                    encoder = _enc_int_subclass
                elif base_type is float:
                    encoder = _enc_float
                elif base_type is str:
                    encoder = _enc_str_subclass
                break
        else:
            encoder = _enc_repr
    if len(_ENCODERS) < _MAX_CACHED_TYPES:
        _ENCODERS[cls] = encoder
    return encoder


def _enc_int_subclass(value: int) -> str:
    return _enc_int(int(value))


def _enc_str_subclass(value: str) -> str:
    return _enc_str(str.__str__(value))


def _custom_encoder(code: str, encode: Callable[[Any], str]) -> Callable[[Any], str]:
    prefix = code + ":"

    def encoder(value: Any) -> str:
        data = encode(value)
        if not isinstance(data, str):
            raise TypeError(
                "the encoder of type code %r returned %s, not str" % (code, type(data).__name__)
            )
        return prefix + _text(data)

    return encoder


def _encode(value: Any) -> Any:
    try:
        encoder = _ENCODERS[type(value)]
    except KeyError:
        encoder = _encoder_for(type(value))
    return encoder(value)


def json_dumps(value: Any) -> bytes:
    """Serialize ``value`` to the extended JSON of hein, as bytes.

    Lists and tuples become lists, dict keys become ``str(key)``; bool, int, float, None, str,
    bytes (and bytearray, memoryview), datetime, date and time keep their types; types added with
    :func:`register_type` use their codes; any other value travels as the text ``repr(value)``.

    Raises:
        ValueError: the value is too deeply nested (or contains itself).
    """
    try:
        tree = _encode(value)
    except RecursionError:
        raise ValueError("value too deeply nested (or recursive) to serialize") from None
    return _json_encode(tree).encode("latin-1")


# ----------------------------------------------------------------------------------- decoding


def _fields(data: str, what: str) -> List[str]:
    if len(data) > 400:
        raise ProtocolError("%s field too long" % what)
    return data.split(",")


def _ints(fields: List[str], what: str) -> List[int]:
    try:
        return [int(item) if item else 0 for item in fields]
    except ValueError:
        raise ProtocolError("bad %s fields %r" % (what, ",".join(fields))) from None


_pytz_zones: Dict[str, Any] = {}


def _pytz_zone(name: str) -> Any:
    zone = _pytz_zones.get(name)
    if zone is None:
        try:
            zone = pytz.timezone(name)
        except (pytz.UnknownTimeZoneError, ValueError, KeyError):
            raise ProtocolError("unknown time zone %r" % name) from None
        _pytz_zones[name] = zone
    return zone


def _zone_from_id(zone_id: int, offset: int) -> Any:
    """The tzinfo named by a zone id (see :func:`_zone_id`); ``offset`` in microseconds."""
    if zone_id > 0:
        name = zone_id.to_bytes((zone_id.bit_length() + 7) // 8, "big")
        kind, key = name[:1], name[1:].decode("latin-1")
        if kind == b"p":
            return _pytz_zone(key)
        if kind == b"z" and _zoneinfo is not None:
            try:
                return _zoneinfo.ZoneInfo(key)
            except (ValueError, OSError, _zoneinfo.ZoneInfoNotFoundError):
                pass  # unknown here: keep the offset, below
    if offset == 0:
        return _UTC
    try:
        return _timezone(_timedelta(microseconds=offset))
    except (ValueError, OverflowError):
        raise ProtocolError("bad UTC offset %d" % offset) from None


_zones_by_id: Dict[Tuple[str, int], Any] = {}


def _zone_for(zone_id: str, offset: int) -> Any:
    """The tzinfo for a zone id field and an offset in microseconds (cached per pair)."""
    key = (zone_id, offset)
    zone = _zones_by_id.get(key)
    if zone is None:
        if len(zone_id) > _MAX_ZONE_ID_DIGITS:
            raise ProtocolError("zone id too long")
        try:
            number = int(zone_id) if zone_id else 0
        except ValueError:
            raise ProtocolError("bad zone id %r" % zone_id[:40]) from None
        zone = _zone_from_id(number, offset)
        if len(_zones_by_id) >= 4096:
            _zones_by_id.clear()
        _zones_by_id[key] = zone
    return zone


def _local_in_zone(wall: _datetime, tzinfo: Any, offset: int) -> _datetime:
    """``wall`` (a local time at ``offset`` microseconds from UTC) in ``tzinfo``."""
    wanted = _timedelta(microseconds=offset)
    localize = getattr(tzinfo, "localize", None)
    for attempt in range(2):
        try:
            if localize is not None:  # pytz
                candidate = localize(wall, is_dst=bool(attempt))
            else:
                candidate = wall.replace(tzinfo=tzinfo, fold=attempt)
            if candidate.utcoffset() == wanted:
                return candidate  # type: ignore[no-any-return]
        except (OverflowError, ValueError):  # pytz cannot place times near the ends of time
            if localize is not None and tzinfo.utcoffset(None) in (wanted, None):
                return wall.replace(tzinfo=tzinfo)  # the zone's default (LMT) entry
    return wall.replace(tzinfo=_zone_from_id(0, offset))


def _dec_datetime(data: str) -> _datetime:
    fields = data.split(",")
    if len(fields) == 10 and fields[9] == "UTC":  # hein 1: UTC wall time, offset, zone id
        try:
            year, month, day, hour, minute, second, micro, offset = map(int, fields[:8])
            tzinfo = _zone_for(fields[8], offset * 1_000_000)
            if tzinfo is _UTC or tzinfo is _PYTZ_UTC:
                return _datetime(year, month, day, hour, minute, second, micro, tzinfo)
            utc = _datetime(year, month, day, hour, minute, second, micro, _UTC)
            return utc.astimezone(tzinfo)
        except (ValueError, OverflowError) as error:
            raise ProtocolError("bad datetime %r: %s" % (data[:100], error)) from None
    if len(data) > 400:
        raise ProtocolError("datetime field too long")
    zone = fields.pop()
    if len(fields) < 7:
        raise ProtocolError("datetime needs 7 fields, got %r" % data)
    numbers = _ints(fields[:10], "datetime")
    try:
        wall = _datetime(*numbers[:7])  # type: ignore[arg-type]
        if len(numbers) >= 9:  # hein 1: wall time, offset (s), zone id, [offset (us)]
            offset = numbers[7] * 1_000_000 + (numbers[9] if len(numbers) >= 10 else 0)
            tzinfo = _zone_for(fields[8], offset)
            if zone == "UTC":
                return wall.replace(tzinfo=_UTC).astimezone(tzinfo)
            # the local wall time (sent when the UTC one is out of range)
            return _local_in_zone(wall, tzinfo, offset)
        if zone:  # hein 0.2.3: local wall time in a pytz zone
            tzinfo = _pytz_zone(zone)
            localize = getattr(tzinfo, "localize", None)
            return localize(wall) if localize is not None else wall.replace(tzinfo=tzinfo)
        return wall
    except (ValueError, OverflowError) as error:
        raise ProtocolError("bad datetime %r: %s" % (data, error)) from None


def _dec_date(data: str) -> _date:
    numbers = _ints(_fields(data, "date"), "date")
    if len(numbers) < 3:
        raise ProtocolError("date needs 3 fields, got %r" % data)
    try:
        return _date(*numbers[:3])
    except (ValueError, OverflowError) as error:
        raise ProtocolError("bad date %r: %s" % (data, error)) from None


def _dec_time(data: str) -> _time:
    fields = _fields(data, "time")
    zone = fields.pop()
    if len(fields) < 4:
        raise ProtocolError("time needs 4 fields, got %r" % data)
    if len(fields) >= 6 and len(fields[5]) > _MAX_ZONE_ID_DIGITS:
        raise ProtocolError("zone id too long")
    numbers = _ints(fields, "time")
    try:
        if len(numbers) >= 6:  # hein 1: offset (s), zone id, [offset (us)]
            offset = numbers[4] * 1_000_000 + (numbers[6] if len(numbers) >= 7 else 0)
            tzinfo = _zone_from_id(numbers[5], offset)
        elif zone:
            tzinfo = _pytz_zone(zone)
        else:
            tzinfo = None
        hour, minute, second, micro = numbers[:4]
        return _time(hour, minute, second, micro, tzinfo=tzinfo)
    except (ValueError, OverflowError) as error:
        raise ProtocolError("bad time %r: %s" % (data, error)) from None


def _dec_int(data: str) -> int:
    try:
        return int(data)
    except ValueError:
        pass
    if data.lstrip("-")[:2] in ("0x", "0X"):  # hexadecimal is parsed in linear time
        try:
            return int(data, 16)
        except ValueError:
            pass
    raise ProtocolError("bad int %r" % data[:50])


def _dec_float(data: str) -> float:
    try:
        return float(data)
    except ValueError:
        raise ProtocolError("bad float %r" % data[:50]) from None


def _dec_bool(data: str) -> bool:
    if data == "1":
        return True
    if data == "0":
        return False
    return bool(_dec_int(data))


def _dec_none(data: str) -> None:
    return None


def _dec_text(data: str) -> str:
    if data.isascii():
        return data
    try:
        return data.encode("latin-1").decode("utf-8", "surrogatepass")
    except UnicodeError:
        raise ProtocolError("text leaf is not valid UTF-8") from None


def _dec_bytes(data: str) -> bytes:
    try:
        return data.encode("latin-1")
    except UnicodeEncodeError:
        raise ProtocolError("bytes leaf holds a character above \\xff") from None


_DECODERS: Dict[str, Callable[[str], Any]] = {
    "b:": _dec_bool,
    "i:": _dec_int,
    "f:": _dec_float,
    "n:": _dec_none,
    "u:": _dec_text,
    "y:": _dec_bytes,
    "Y:": _dec_bytes,
    "s:": _dec_bytes,
    "t:": _dec_datetime,
    "D:": _dec_date,
    "T:": _dec_time,
}


def _decode_key(key: str) -> str:
    if key.isascii():
        return key
    raw = key.encode("latin-1")
    try:  # hein 1 writes UTF-8 keys; hein 0.2.3 wrote Latin-1 ones
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return key


def _decode(node: Any) -> Any:
    kind = type(node)
    if kind is str:
        try:
            decoder = _DECODERS[node[:2]]
        except KeyError:
            raise ProtocolError("unknown type code in leaf %r" % node[:20]) from None
        return decoder(node[2:])
    if kind is dict:
        out = {}
        decoders = _DECODERS
        for key, item in node.items():
            if type(item) is str:
                # ASCII text inline (a function call costs as much as the work)
                value: Any
                code = item[:2]
                if code == "u:" and item.isascii():
                    value = item[2:]
                else:
                    leaf_decoder = decoders.get(code)
                    if leaf_decoder is None:
                        raise ProtocolError("unknown type code in leaf %r" % item[:20])
                    value = leaf_decoder(item[2:])
            else:
                value = _decode(item)
            out[key if key.isascii() else _decode_key(key)] = value
        return out
    if kind is list:
        return [_decode(item) for item in node]
    raise ProtocolError("leaf %r is not a typed string" % (node,))


def scan_document(scan: Callable[[str, int], Tuple[Any, int]], text: str) -> Any:
    """The one JSON document ``text`` holds (white space around it allowed), read by a JSON
    decoder's ``scan_once``.

    Raises:
        ProtocolError: ``text`` is not one JSON document.
    """
    start = 0
    if text[:1] in _WHITESPACE and text:
        start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = scan(text, start)
    except StopIteration:
        raise ProtocolError("payload is not JSON: %r" % text[:50]) from None
    except (ValueError, RecursionError) as error:
        raise ProtocolError("payload is not JSON: %s" % error) from None
    if end != len(text) and text[end:].strip(_WHITESPACE):
        raise ProtocolError("trailing data after the JSON document")
    return value


def json_loads(data: bytes) -> Any:
    """Deserialize extended JSON (as written by :func:`json_dumps` or by hein 0.2.3).

    Args:
        data: the payload bytes (a ``str`` is taken as the Latin-1 view of the bytes).

    Raises:
        ProtocolError: ``data`` is not valid extended JSON (bad JSON, unknown type code, bad
            datetime fields, bad UTF-8, too deeply nested).
    """
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("latin-1")
        except TypeError:
            raise ProtocolError("payload must be bytes, not %s" % type(data).__name__) from None
    tree = scan_document(_JSON_SCAN, text)
    try:
        return _decode(tree)
    except RecursionError:
        raise ProtocolError("payload too deeply nested") from None


class DecodeFailure:
    """Stands for a payload :func:`json_loads_many` could not decode (``error`` says why)."""

    __slots__ = ("error",)

    def __init__(self, error: ProtocolError) -> None:
        self.error = error


def json_loads_many(payloads: List[bytes]) -> List[Any]:
    """Decode several payloads at once: the values, in order, with a :class:`DecodeFailure`
    in place of each payload that is not valid extended JSON.

    One JSON scan reads all of them (the per-call overhead is most of the cost of small
    messages); if that scan fails, each payload is decoded on its own, so that one bad
    payload costs only itself.
    """
    if len(payloads) > 1:
        text = (b"[" + b",".join(payloads) + b"]").decode("latin-1")
        try:
            trees, end = _JSON_SCAN(text, 0)
        except (StopIteration, ValueError, RecursionError):
            trees, end = (), 0
        if end == len(text) and len(trees) == len(payloads):
            values: List[Any] = []
            for tree in trees:
                try:
                    values.append(_decode(tree))
                except ProtocolError as error:
                    values.append(DecodeFailure(error))
                except RecursionError:
                    values.append(DecodeFailure(ProtocolError("payload too deeply nested")))
            return values
    values = []
    for payload in payloads:
        try:
            values.append(json_loads(payload))
        except ProtocolError as error:
            values.append(DecodeFailure(error))
    return values


# ------------------------------------------------------------------------------- custom types


def register_type(
    cls: type, code: str, encode: Callable[[Any], str], decode: Callable[[str], Any]
) -> None:
    """Make instances of ``cls`` travel with their type.

    Args:
        cls: the class (its subclasses use the same code).
        code: one character, not one of the built-in codes (``BUILTIN_CODES``), not already used
            by another class.
        encode: turns an instance into a str (any text).
        decode: turns that str back into an instance. An exception it raises is reported as a
            :class:`~hein.errors.ProtocolError`.

    Raises:
        ValueError: the code is not one character, is built in, or is taken by another class.
        TypeError: ``cls`` is not a class or the functions are not callable.
    """
    if not isinstance(cls, type):
        raise TypeError("cls must be a class, not %r" % (cls,))
    if not callable(encode) or not callable(decode):
        raise TypeError("encode and decode must be callable")
    if not isinstance(code, str) or len(code) != 1 or code in ':"\\' or not code.isprintable():
        raise ValueError(
            'a type code is one printable character other than : " \\, got %r' % (code,)
        )
    if ord(code) > 0xFF:
        raise ValueError("a type code must be a Latin-1 character, got %r" % code)
    if code in BUILTIN_CODES:
        raise ValueError("type code %r is built into hein and cannot be registered" % code)
    if cls in _ENCODERS and cls not in _CUSTOM and any(cls is t for t, _ in _BUILTIN_ENCODERS):
        raise ValueError("%s is a built-in type of hein and cannot be registered" % cls.__name__)
    for other, (other_code, _) in _CUSTOM.items():
        if other_code == code and other is not cls:
            raise ValueError("type code %r is already used by %s" % (code, other.__name__))

    def decoder(data: str) -> Any:
        try:
            return decode(_dec_text(data))
        except ProtocolError:
            raise
        except Exception as error:
            raise ProtocolError("decoder of type code %r failed: %r" % (code, error)) from None

    previous = _CUSTOM.get(cls)
    if previous is not None and previous[0] != code:
        _DECODERS.pop(previous[0] + ":", None)
    _CUSTOM[cls] = (code, encode)
    _DECODERS[code + ":"] = decoder
    _reset_encoder_cache()


def unregister_type(cls: type) -> None:
    """Undo :func:`register_type` for ``cls`` (no error if it was not registered)."""
    custom = _CUSTOM.pop(cls, None)
    if custom is not None:
        _DECODERS.pop(custom[0] + ":", None)
        _reset_encoder_cache()


def _reset_encoder_cache() -> None:
    global _CUSTOM_NATIVE
    _CUSTOM_NATIVE = any(issubclass(cls, (str, int, float, list, tuple, dict)) for cls in _CUSTOM)
    _ENCODERS.clear()
    _ENCODERS.update((t, e) for t, e in _BUILTIN_ENCODERS if t not in (bytearray, memoryview))

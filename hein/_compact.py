"""The compact encoding of hein 1 (extension 5 of ``PROTOCOL.rst``): plain JSON where JSON can.

Sans-I/O. A hein 1 transmitter sends ``tell`` payloads in this encoding (frame kind
``__jsc__``) only while every registered receiver asked for it in its control frame; hein 0.2.3
receivers never ask, so they get the extended JSON of :mod:`hein._serializer`. Both encodings
decode to the same value.

The payload is UTF-8 JSON (lone surrogates pass through, as in the extended JSON). str, int,
float, bool, None, lists (and tuples) and dicts with str keys are plain JSON; every other value
is an object with the single key ``"\\u0000"``:

- ``{"\\u0000": ["t", Y, M, D, h, m, s, us]}``: a naive datetime;
  ``["t", Y, M, D, h, m, s, us, OFFSET_US, ZONE_ID]``: an aware one, as its UTC wall time, its
  UTC offset in microseconds and the zone id of the extended JSON (0 for a fixed offset);
  ``["t", ..., OFFSET_US, ZONE_ID, 1]``: an aware one as its local wall time (when the UTC one is
  out of range);
- ``{"\\u0000": ["y", BASE64]}``: bytes;
- ``{"\\u0000": ["d", [[KEY, VALUE], ...]]}``: a dict that has a ``"\\u0000"`` key itself;
- ``{"\\u0000": "C:DATA"}``: any other leaf, as the extended JSON writes it (date, time, a float
  that is not finite, an int too long for decimal, a type added with ``register_type``).

Strategy: the C JSON encoder writes the value in one call, its ``default`` hook turning the
leaves it does not know into those objects. A Python walk first checks what the C encoder would
get wrong (keys that are not str, a ``"\\u0000"`` key, subclasses of JSON types registered with
``register_type``); such values, and those with floats that are not finite or huge ints, are
rebuilt in Python first. The decoder is the C scanner with an ``object_hook`` that rebuilds the
leaves; a whole read's payloads are scanned in one call.
"""

import base64
import binascii
import json
from typing import Any, Callable, Dict, List, Optional

from . import _serializer as _s
from .errors import ProtocolError

__all__ = ["compact_dumps", "compact_loads", "compact_loads_many", "compact_loads_joined"]

_MARK = "\x00"
_datetime = _s._datetime
_UTC = _s._UTC

# ----------------------------------------------------------------------------------- encoding


def _leaf_datetime(value: Any) -> Any:
    fields, offset, zone_id, local = _s._datetime_parts(value)
    if offset is None:
        return {_MARK: ["t", *fields]}
    if local:
        return {_MARK: ["t", *fields, offset, zone_id, 1]}
    return {_MARK: ["t", *fields, offset, zone_id]}


def _leaf_bytes(value: Any) -> Any:
    return {_MARK: ["y", binascii.b2a_base64(value, newline=False).decode("ascii")]}


def _legacy_leaf(value: Any) -> Any:
    """A value of any other type, as the extended JSON writes it (text as text)."""
    cls = type(value)
    encoder = _s._ENCODERS.get(cls) or _s._encoder_for(cls)
    if encoder is _s._enc_bytes:
        return _leaf_bytes(bytes(value))
    if encoder is _s._enc_datetime:
        return _leaf_datetime(value)
    leaf = encoder(value)
    if type(leaf) is not str:  # pragma: no cover - containers are handled before
        raise TypeError("cannot encode %s" % cls.__name__)
    if leaf[:2] == "u:":
        return _s._dec_text(leaf[2:])
    return {_MARK: leaf}


def _default(value: Any) -> Any:
    """The C encoder's hook for the values JSON does not know."""
    cls = type(value)
    if cls is _datetime:
        return _leaf_datetime(value)
    if cls is bytes:
        return _leaf_bytes(value)
    return _legacy_leaf(value)


try:  # the C encoder, made once
    from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
    from json.encoder import encode_basestring as _encode_basestring

    _C_ENCODE = (
        _c_make_encoder(None, _default, _encode_basestring, None, ":", ",", False, False, False)
        if _c_make_encoder is not None
        else None
    )
except ImportError:  # pragma: no cover - not CPython
    _C_ENCODE = None
_PY_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    check_circular=False,
    separators=(",", ":"),
    allow_nan=False,
    default=_default,
)


def _plain(value: Any) -> bool:
    """Whether the C encoder writes ``value`` as the compact encoding wants it (leaves aside).

    Checks containers only: dict keys must be str and not ``"\\u0000"``.
    """
    cls = type(value)
    if cls is dict:
        if _MARK in value:
            return False
        for key, item in value.items():
            if type(key) is not str:
                return False
            kind = type(item)
            if (kind is dict or kind is list or kind is tuple) and not _plain(item):
                return False
        return True
    if cls is list or cls is tuple:
        for item in value:
            kind = type(item)
            if (kind is dict or kind is list or kind is tuple) and not _plain(item):
                return False
        return True
    return True


def _rebuild(value: Any) -> Any:
    """``value`` as a tree the C encoder writes right: keys as ``str(key)``, escaped dicts,
    special floats and huge ints as leaves, registered types before their JSON bases."""
    cls = type(value)
    if cls is str or cls is bool or value is None:
        return value
    if cls is int:
        leaf = _s._enc_int(value)
        return value if leaf[2:4] != "0x" and leaf[2:5] != "-0x" else {_MARK: leaf}
    if cls is float:
        return value if value - value == 0.0 else {_MARK: _s._enc_float(value)}
    encoder = _s._ENCODERS.get(cls) or _s._encoder_for(cls)
    if encoder is _s._enc_dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                key = str(key)
            out[key] = _rebuild(item)
        if _MARK in out:
            return {_MARK: ["d", [[key, item] for key, item in out.items()]]}
        return out
    if encoder is _s._enc_list:
        return [_rebuild(item) for item in value]
    return _legacy_leaf(value)


def compact_dumps(value: Any) -> bytes:
    """Serialize ``value`` to the compact encoding, as bytes.

    The same values as :func:`hein.json_dumps`, with the same meaning.

    Raises:
        ValueError: the value is too deeply nested (or contains itself).
    """
    try:
        if not _s._CUSTOM_NATIVE and _plain(value):
            try:
                if _C_ENCODE is not None:
                    text = "".join(_C_ENCODE(value, 0))
                else:  # pragma: no cover - not CPython
                    text = _PY_ENCODER.encode(value)
                return text.encode("utf-8", "surrogatepass")
            except ValueError:  # a float that is not finite, or an int too long: rebuild
                pass
        tree = _rebuild(value)
        if _C_ENCODE is not None:
            text = "".join(_C_ENCODE(tree, 0))
        else:  # pragma: no cover - not CPython
            text = _PY_ENCODER.encode(tree)
    except RecursionError:
        raise ValueError("value too deeply nested (or recursive) to serialize") from None
    return text.encode("utf-8", "surrogatepass")


# ----------------------------------------------------------------------------------- decoding

_zones: Dict[Any, Any] = {}


def _dec_datetime(fields: List[Any]) -> Any:
    if len(fields) == 8:
        return _datetime(*fields[1:])
    offset = fields[8]
    zone_id = fields[9]
    if type(offset) is not int or type(zone_id) is not int:
        raise ProtocolError("bad datetime %r" % (fields[:12],))
    key = (zone_id, offset)
    tzinfo = _zones.get(key)
    if tzinfo is None:
        if zone_id.bit_length() > 8 * _s._MAX_ZONE_ID_DIGITS // 2:
            raise ProtocolError("zone id too long")
        tzinfo = _s._zone_from_id(zone_id, offset)
        if len(_zones) >= 4096:
            _zones.clear()
        _zones[key] = tzinfo
    if len(fields) == 10:
        year, month, day, hour, minute, second, micro = fields[1:8]
        if tzinfo is _UTC or tzinfo is _s._PYTZ_UTC:
            return _datetime(year, month, day, hour, minute, second, micro, tzinfo)
        utc = _datetime(year, month, day, hour, minute, second, micro, _UTC)
        return utc.astimezone(tzinfo)
    if len(fields) == 11 and fields[10] == 1:
        return _s._local_in_zone(_datetime(*fields[1:8]), tzinfo, offset)
    raise ProtocolError("bad datetime %r" % (fields[:12],))


def _dec_bytes(fields: List[Any]) -> bytes:
    if len(fields) != 2 or type(fields[1]) is not str:
        raise ProtocolError("bad bytes leaf")
    return base64.b64decode(fields[1], validate=True)


def _dec_dict(fields: List[Any]) -> Dict[str, Any]:
    if len(fields) != 2 or type(fields[1]) is not list:
        raise ProtocolError("bad escaped dict")
    out = {}
    for pair in fields[1]:
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
            raise ProtocolError("bad escaped dict")
        out[pair[0]] = pair[1]
    return out


_LIST_LEAVES: Dict[str, Callable[[List[Any]], Any]] = {
    "t": _dec_datetime,
    "y": _dec_bytes,
    "d": _dec_dict,
}


def _hook(node: Dict[str, Any]) -> Any:
    if _MARK not in node:
        return node
    if len(node) != 1:
        raise ProtocolError("a typed leaf has one key")
    fields = node[_MARK]
    try:
        if type(fields) is list:
            return _LIST_LEAVES[fields[0]](fields)
        if type(fields) is str:
            return _s._DECODERS[fields[:2]](fields[2:])
    except ProtocolError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, binascii.Error) as error:
        raise ProtocolError("bad typed leaf %r: %s" % (str(fields)[:60], error)) from None
    raise ProtocolError("bad typed leaf %r" % (str(fields)[:60],))


_SCAN = json.JSONDecoder(object_hook=_hook).scan_once  # type: ignore[attr-defined]


def compact_loads(data: bytes) -> Any:
    """Deserialize a compact payload (as written by :func:`compact_dumps`).

    Raises:
        ProtocolError: ``data`` is not a valid compact payload.
    """
    try:
        text = bytes(data).decode("utf-8", "surrogatepass")
    except (TypeError, UnicodeDecodeError) as error:
        raise ProtocolError("compact payload is not UTF-8: %s" % error) from None
    return _s.scan_document(_SCAN, text)


def compact_loads_many(payloads: List[bytes]) -> List[Any]:
    """Decode several compact payloads at once, like :func:`hein._serializer.json_loads_many`
    (a :class:`~hein._serializer.DecodeFailure` in place of each bad one)."""
    if len(payloads) > 1:
        values = compact_loads_joined(b",".join(payloads), len(payloads))
        if values is not None:
            return values
    out: List[Any] = []
    for payload in payloads:
        try:
            out.append(compact_loads(payload))
        except ProtocolError as error:
            out.append(_s.DecodeFailure(error))
    return out


def compact_loads_joined(joined: bytes, count: int) -> Optional[List[Any]]:
    """Decode ``count`` compact payloads joined by commas, in one scan; None when that is not
    ``count`` valid payloads (decode them one by one then, to find the bad ones)."""
    try:
        text = (b"[" + joined + b"]").decode("utf-8", "surrogatepass")
        values, end = _SCAN(text, 0)
    except (StopIteration, ValueError, RecursionError, ProtocolError):
        return None
    if end != len(text) or len(values) != count:
        return None
    return values  # type: ignore[no-any-return]

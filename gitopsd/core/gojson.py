"""Go's ``encoding/json.Marshal`` output, byte for byte, for JSON-shaped Python values.

Why this exists: a ClusterPack's Ed25519 signature covers the bytes of its ``spec`` as Go writes them
(``json.Marshal`` of the spec decoded into ``interface{}``), so that Go tenants (the ontai conductor)
can verify it without a canonicalisation library. Python's ``json.dumps`` differs from Go in escaping,
key order and number formatting, so this module reimplements Go's encoder for the value shapes that
``json.Unmarshal`` into ``interface{}`` produces: ``map[string]interface{}``, ``[]interface{}``,
``string``, ``float64``, ``bool`` and ``nil``.

Reference: Go's ``src/encoding/json/encode.go`` as of Go 1.22+ (``appendString``, ``floatEncoder``,
``mapEncoder``). Neighbours: the sign-bytes step in the core calls :func:`marshal`; the keys adapter
signs the result. Pure: no I/O.
"""

from __future__ import annotations

import decimal
import math
from collections import abc

__all__ = ["marshal"]

_HEX = "0123456789abcdef"

# ASCII bytes Go writes escaped with HTML escaping on (the default for json.Marshal).
# Go >= 1.22 writes \b and \f as short escapes (before 1.22 they were \u0008 and \u000c);
# we follow the current behaviour. \n \r \t \" \\ have short escapes in every Go version.
_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _escape_table() -> dict[int, str]:
    table: dict[int, str] = {code: f"\\u00{_HEX[code >> 4]}{_HEX[code & 0xF]}" for code in range(0x20)}
    for char in "<>&":  # HTML-safe escaping: \u003c \u003e \u0026
        table[ord(char)] = f"\\u00{_HEX[ord(char) >> 4]}{_HEX[ord(char) & 0xF]}"
    for char, escaped in _SHORT_ESCAPES.items():
        table[ord(char)] = escaped
    # U+2028 / U+2029 are valid JSON but break JSONP; Go escapes them unconditionally.
    table[0x2028] = "\\u2028"
    table[0x2029] = "\\u2029"
    return table


_ESCAPES = _escape_table()


def marshal(value: object) -> bytes:
    """Return the bytes Go's ``json.Marshal`` writes for ``value`` decoded into ``interface{}``.

    Raises ``ValueError`` for NaN, infinities and numbers beyond float64 range (Go errors on those)
    and ``TypeError`` for anything that is not JSON-shaped (dict with str keys, list/tuple, str,
    int, float, bool, None).
    """
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts).encode("utf-8")


def _encode(value: object, parts: list[str]) -> None:
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, str):
        parts.append(_quote(value))
    elif isinstance(value, (int, float)):
        parts.append(_number(value))
    elif isinstance(value, abc.Mapping):
        _encode_object(value, parts)
    elif isinstance(value, (list, tuple)):
        _encode_array(value, parts)
    else:
        raise TypeError(f"gojson: cannot encode {type(value).__name__}; only JSON-shaped values are allowed")


def _encode_object(value: abc.Mapping[object, object], parts: list[str]) -> None:
    members: dict[str, object] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise TypeError(f"gojson: object key {key!r} is a {type(key).__name__}, not a str")
        # Go's decoder stores keys as valid UTF-8; two Python keys that become the same Go string
        # collapse into one map entry and the later one wins, as in Go's decoder.
        members[_go_string(key)] = item
    parts.append("{")
    # Go sorts map keys with strings.Compare, i.e. by UTF-8 bytes (not by UTF-16 code units).
    for index, key in enumerate(sorted(members, key=lambda k: k.encode("utf-8"))):
        if index:
            parts.append(",")
        parts.append(_quote(key))
        parts.append(":")
        _encode(members[key], parts)
    parts.append("}")


def _encode_array(value: abc.Sequence[object], parts: list[str]) -> None:
    parts.append("[")
    for index, item in enumerate(value):
        if index:
            parts.append(",")
        _encode(item, parts)
    parts.append("]")


def _go_string(text: str) -> str:
    """The string Go's JSON decoder would hold for ``text``: surrogate pairs combined, lone ones U+FFFD.

    Go never holds lone surrogates: its decoder turns an unpaired ``\\ud800`` escape into a valid
    U+FFFD rune, which Marshal then writes as raw UTF-8 (it writes the ``\\ufffd`` escape only for
    invalid bytes, which a decoded Go value cannot contain).
    """
    if text.isascii() or not any(0xD800 <= ord(char) <= 0xDFFF for char in text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _quote(text: str) -> str:
    text = _go_string(text)
    return '"' + text.translate(_ESCAPES) + '"'


def _number(value: int | float) -> str:
    """Format as Go's float64 encoder does: ES6-like, 'f' unless abs < 1e-6 or abs >= 1e21."""
    try:
        number = float(value)  # Go decodes every JSON number into float64.
    except OverflowError as err:
        raise ValueError(f"gojson: integer {value} is beyond float64 range; Go cannot decode it") from err
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"gojson: unsupported value {number!r}; Go's json.Marshal rejects NaN and Inf")
    # repr() gives the shortest digits that round-trip, as strconv.AppendFloat(f, fmt, -1, 64) does.
    sign, digits, exponent = decimal.Decimal(repr(number)).as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits)).rstrip("0") or "0"
    point = len(digits) + exponent  # position of the decimal point relative to the digit string
    magnitude = abs(number)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        body = _exponent_form(text, point)
    else:
        body = _fixed_form(text, point)
    return ("-" if sign else "") + body


def _fixed_form(digits: str, point: int) -> str:
    if digits == "0":
        return "0"
    if point <= 0:
        return "0." + "0" * -point + digits
    if point >= len(digits):
        return digits + "0" * (point - len(digits))
    return digits[:point] + "." + digits[point:]


def _exponent_form(digits: str, point: int) -> str:
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    exponent = point - 1
    # strconv pads the exponent to two digits ("e-07", "e+21"); the encoder then rewrites
    # a padded negative one-digit exponent ("e-07" -> "e-7") but leaves "e+21" alone.
    if exponent < 0:
        return f"{mantissa}e-{-exponent}"
    return f"{mantissa}e+{exponent:02d}"

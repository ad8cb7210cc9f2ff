"""gojson.marshal must give the bytes Go 1.22+'s json.Marshal gives for the same decoded value.

Expected bytes are worked out by hand from Go's encode.go (appendString, floatEncoder, mapEncoder).
"""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from gitopsd.core import gojson

CASES: list[tuple[object, bytes, str]] = [
    # scalars
    (None, b"null", "null"),
    (True, b"true", "true"),
    (False, b"false", "false"),
    ("", b'""', "empty-string"),
    ("plain", b'"plain"', "ascii"),
    # non-ASCII is written raw as UTF-8
    ("caf\u00e9", b'"caf\xc3\xa9"', "latin-e-acute-raw"),
    ("\u65e5\u672c", b'"\xe6\x97\xa5\xe6\x9c\xac"', "cjk-raw"),
    ("party \U0001f389", b'"party \xf0\x9f\x8e\x89"', "emoji-raw-4-byte"),
    # HTML-safe escaping
    ("<a href='x'>&</a>", b"\"\\u003ca href='x'\\u003e\\u0026\\u003c/a\\u003e\"", "html-chars"),
    ("a\u2028b\u2029c", b'"a\\u2028b\\u2029c"', "line-and-paragraph-separator"),
    ('say "hi" \\ bye', b'"say \\"hi\\" \\\\ bye"', "quote-and-backslash"),
    ("/", b'"/"', "slash-not-escaped"),
    ("\x7f", b'"\x7f"', "del-raw"),
    # control characters: \b \f short since Go 1.22; others \u00xx lowercase
    ("\n\r\t", b'"\\n\\r\\t"', "newline-return-tab"),
    ("\b\f", b'"\\b\\f"', "backspace-formfeed-go122"),
    ("\x00\x01\x1b\x1f", b'"\\u0000\\u0001\\u001b\\u001f"', "other-controls-lowercase-hex"),
    # lone surrogates: Go's decoder holds U+FFFD, which Marshal writes raw
    ("x\ud800y", b'"x\xef\xbf\xbdy"', "lone-surrogate-as-go-decodes-it"),
    ("\ud83c\udf89", b'"\xf0\x9f\x8e\x89"', "split-surrogate-pair-joined"),
    # numbers: every number is a float64 in Go
    (0, b"0", "zero"),
    (3, b"3", "int"),
    (-42, b"-42", "negative-int"),
    (3.0, b"3", "integral-float"),
    (1.5, b"1.5", "float"),
    (0.1, b"0.1", "float-0.1"),
    (-1.25, b"-1.25", "negative-float"),
    (123456789.0, b"123456789", "large-integral-float-fixed"),
    (1e20, b"100000000000000000000", "1e20-fixed"),
    (1e21, b"1e+21", "1e21-exponent"),
    (1.5e300, b"1.5e+300", "huge-exponent"),
    (1e-6, b"0.000001", "1e-6-fixed"),
    (1.234e-6, b"0.000001234", "small-fixed"),
    (1e-7, b"1e-7", "1e-7-exponent-unpadded"),
    (-2.5e-9, b"-2.5e-9", "negative-small-exponent"),
    (1e-10, b"1e-10", "two-digit-negative-exponent"),
    (5e-324, b"5e-324", "smallest-subnormal"),
    (1.7976931348623157e308, b"1.7976931348623157e+308", "max-float64"),
    (-0.0, b"-0", "negative-zero"),
    (2**53, b"9007199254740992", "2-pow-53"),
    (2**53 + 1, b"9007199254740992", "big-int-rounded-like-float64"),
    (12345678901234567890, b"12345678901234567000", "uint64-range-int"),
    (10**21, b"1e+21", "int-1e21"),
    # containers
    ({}, b"{}", "empty-object"),
    ([], b"[]", "empty-array"),
    ((1, "a"), b'[1,"a"]', "tuple-as-array"),
    (
        {"b": [1, {"d": None, "c": True}], "a": {"z": "<", "y": [[], {}]}},
        b'{"a":{"y":[[],{}],"z":"\\u003c"},"b":[1,{"c":true,"d":null}]}',
        "nested-sorted-no-whitespace",
    ),
    (
        {"b": 1, "B": 2, "a": 3, "_": 4, "10": 5, "9": 6},
        b'{"10":5,"9":6,"B":2,"_":4,"a":3,"b":1}',
        "ascii-key-byte-order",
    ),
    (
        {"\U0001f600": 1, "\uff61": 2, "\u00e9": 3, "z": 4, "\ud800": 5},
        b'{"z":4,"\xc3\xa9":3,"\xef\xbd\xa1":2,"\xef\xbf\xbd":5,"\xf0\x9f\x98\x80":1}',
        "non-ascii-keys-by-utf8-bytes",
    ),
    ({"<&>": "\u2028"}, b'{"\\u003c\\u0026\\u003e":"\\u2028"}', "keys-escaped-too"),
    ({chr(0xD800): 1, "\ufffd": 2}, b'{"\xef\xbf\xbd":2}', "keys-equal-in-go-last-wins"),
]


@pytest.mark.parametrize(("value", "expected"), [(v, e) for v, e, _ in CASES], ids=[i for _, _, i in CASES])
def test_marshal_matches_go_bytes(value: object, expected: bytes) -> None:
    assert gojson.marshal(value) == expected


REJECTED: list[tuple[object, type[Exception], str]] = [
    (math.nan, ValueError, "nan"),
    (math.inf, ValueError, "inf"),
    (-math.inf, ValueError, "negative-inf"),
    ([1, {"x": math.nan}], ValueError, "nested-nan"),
    (10**400, ValueError, "int-beyond-float64"),
    ({1: "a"}, TypeError, "non-str-key"),
    (b"bytes", TypeError, "bytes"),
    ({"a": {1, 2}}, TypeError, "set"),
]


@pytest.mark.parametrize(("value", "error"), [(v, e) for v, e, _ in REJECTED], ids=[i for _, _, i in REJECTED])
def test_marshal_rejects_what_go_rejects(value: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        gojson.marshal(value)


def test_marshal_output_is_valid_json_whose_value_is_the_input_for_random_documents() -> None:
    rng = random.Random(20240601)
    for _ in range(500):
        value = _random_value(rng, depth=0)
        encoded = gojson.marshal(value)
        assert json.loads(encoded, parse_int=float) == value, encoded  # Go decodes numbers as float64
        outside_strings = _STRING_LITERAL.sub(b'""', encoded)
        assert not any(byte in outside_strings for byte in b" \n\r\t"), encoded


def test_marshal_of_python_floats_parses_back_to_the_same_float64() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        number = rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 10.0 ** rng.randint(-320, 308)])
        assert float(json.loads(gojson.marshal(number))) == number


_STRING_LITERAL = re.compile(rb'"(?:[^"\\]|\\.)*"')

_ALPHABET = [
    "a", "Z", "0", " ", "<", ">", "&", '"', "\\", "/", "\n", "\b", "\x00", "\x1f", "\x7f",
    "\u00e9", "\u2028", "\u2029", "\u65e5", "\ufffd", "\U0001f389",
]  # fmt: skip


def _random_string(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 8)))


def _random_value(rng: random.Random, depth: int) -> object:
    kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.randint(-(2**53), 2**53)
    if kind == "float":
        return rng.uniform(-1e3, 1e3) * 10.0 ** rng.randint(-30, 30)
    if kind == "str":
        return _random_string(rng)
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_random_string(rng): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}

"""A cheap check of untrusted JSON text *before* anything parses it.

Python's `json` parser (and every recursive walk after it: schema validation, query translation, the
JMESPath interpreter) recurses once per nesting level, so a body of 10,000 `[` costs a RecursionError
deep inside a library; it also turns `NaN`, `Infinity` and `1e999` into floats that `json.dumps` writes
back as the same non-JSON tokens, and a 5,000-digit integer into a quadratic-time conversion. Rather
than catch any of that afterwards, :func:`check_json` refuses such text up front, in time linear in its
length and without recursion:

* nesting deeper than `max_depth` arrays/objects;
* the non-standard constants `NaN`, `Infinity`, `-Infinity`;
* a number longer than `max_number_length` characters, or one that overflows a double (`1e999`);
* a lone surrogate escape (`"\\ud800"`): it parses into a string that cannot be encoded as UTF-8,
  so it fails later, in storage, indexing or a webhook, far from the request that brought it.

Strings are removed first with one regular expression, so brackets and letters inside them never count.
Text that is not JSON at all may pass (the parser that follows refuses it): on any well-formed prefix the
check tokenises strings exactly as the parser does, so the parser never gets deeper than the check saw.
"""
from __future__ import annotations

import itertools
import math
import re

__all__ = ["check_json", "UnsafeJSON", "MAX_DEPTH", "MAX_NUMBER_LENGTH"]

MAX_DEPTH = 100  # Elasticsearch's own parser stops at a similar depth; no DSS document needs more
MAX_NUMBER_LENGTH = 100  # characters; a double needs at most 24, a 64-bit integer 20

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_SQUARE = bytes.maketrans(b"{}", b"[]")
_STEP = {ord("["): 1, ord("]"): -1}
_CONSTANT = re.compile(rb"NaN|Infinity")
_LONG_NUMBER = re.compile(rb"[-+.0-9eE]{%d,}" % (MAX_NUMBER_LENGTH + 1))
# Numbers are at most MAX_NUMBER_LENGTH characters (< 1e100), so only an exponent of three or more digits
# can overflow a double; only those few are converted.
_BIG_EXPONENT = re.compile(rb"-?[0-9]+(?:\.[0-9]+)?[eE]\+?0*[1-9][0-9]{2,}")
# A surrogate escape, with the run of backslashes before it: it is an escape only if the run is odd.
_SURROGATE = re.compile(rb"(\\+)u[dD]([0-9a-fA-F])[0-9a-fA-F]{2}")
_LOW_ESCAPE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_SLICE = 64 * 1024  # the depth scan yields between slices, so no single C call holds the GIL for long


class UnsafeJSON(ValueError):
    """The text is refused before parsing; the message says why, for the client."""


def check_json(text: bytes | str, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`UnsafeJSON` if parsing `text` could recurse past `max_depth` levels or produce a
    non-finite or over-long number."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    outside = _STRING.sub(b'""', data)
    if _CONSTANT.search(outside):
        raise UnsafeJSON("NaN and Infinity are not JSON")
    if _LONG_NUMBER.search(outside):
        raise UnsafeJSON(f"A number in the JSON is longer than {MAX_NUMBER_LENGTH} characters")
    for match in _BIG_EXPONENT.finditer(outside):
        if math.isinf(float(match.group())):
            raise UnsafeJSON("A number in the JSON is too large for a double")
    if _max_depth(outside.translate(_SQUARE, _NOT_BRACKETS), max_depth) > max_depth:
        raise UnsafeJSON(f"The JSON is nested more than {max_depth} levels deep")
    if _lone_surrogate(data):
        raise UnsafeJSON("A string in the JSON holds a lone surrogate escape, which is not Unicode text")


def _lone_surrogate(data: bytes) -> bool:
    """Whether `data` escapes a high surrogate not followed by a low one, or a low one not after a high one."""
    paired_low = -1  # where the low half of the last pair starts
    for match in _SURROGATE.finditer(data):
        if len(match.group(1)) % 2 == 0:
            continue  # an escaped backslash followed by the letters "ud…"
        start = match.end(1) - 1
        if match.group(2) in b"89abAB":
            if not _LOW_ESCAPE.match(data, match.end()):
                return True
            paired_low = match.end()
        elif start != paired_low:
            return True
    return False


def _max_depth(brackets: bytes, limit: int) -> int:
    """The deepest nesting of a string of `[` and `]`, or the first depth found over `limit`."""
    depth = deepest = 0
    for start in range(0, len(brackets), _SLICE):
        chunk = brackets[start:start + _SLICE]
        opens = chunk.count(b"[")
        if depth + opens > limit:  # only then is the exact walk needed
            deepest = max(deepest, max(itertools.accumulate(map(_STEP.__getitem__, chunk), initial=depth)))
            if deepest > limit:
                return deepest
        else:
            deepest = max(deepest, depth + opens)
        depth += 2 * opens - len(chunk)
    return deepest

"""How values become searchable terms, following the Elasticsearch 7 mapping of the original DSS.

* keyword fields: the whole string, lower-cased (the `lowercase` normalizer), skipped above 256 chars;
* their `.text` sub-fields: the standard analyzer, i.e. Unicode word segmentation (UAX #29) and lower
  case; this module approximates the segmentation rules that matter for metadata (letters and digits
  joined by `_`, letters joined by `.`, `'` or `:`, digits joined by `.`, `,`, `;` or `'`);
* numbers: `long` for JSON integers, `float` (single precision) for JSON reals;
* dates: strings in `strict_date_optional_time` form, kept as epoch milliseconds; query-side parsing
  understands date math (`now-1d/d`, `2019-01-01||+1M`) and the rounding rules of range bounds.
"""
from __future__ import annotations

import calendar
import datetime as dt
import math
import re
import struct
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "IGNORE_ABOVE", "POSITION_GAP", "MAX_TOKEN_LENGTH", "tokenize", "normalise_keyword", "keyword_text",
    "float32", "parse_long", "parse_float", "parse_boolean", "looks_like_date", "parse_date",
    "parse_date_math", "parse_time_zone", "DateError",
]

IGNORE_ABOVE = 256
# Positions between consecutive values of one text field (Elasticsearch's position_increment_gap).
POSITION_GAP = 100
MAX_TOKEN_LENGTH = 255
_LONG_MIN, _LONG_MAX = -(2 ** 63), 2 ** 63 - 1

_TOKEN = re.compile(r"\w+(?:(?:(?<=[^\W\d_])[.'’:·](?=[^\W\d_])|(?<=\d)[.,;'’](?=\d))\w+)*")
_HAS_ALNUM = re.compile(r"[^\W_]")
_JOINERS = re.compile(r"[.,;:'’·]")
_ASCII_WORD = re.compile(r"\w+", re.ASCII)


class DateError(ValueError):
    pass


def _segment(text: str) -> tuple[str, ...]:
    tokens = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if "_" in token and not _HAS_ALNUM.search(token):
            continue  # underscores alone make no token
        token = token.lower()
        while len(token) > MAX_TOKEN_LENGTH:
            tokens.append(token[:MAX_TOKEN_LENGTH])
            token = token[MAX_TOKEN_LENGTH:]
        tokens.append(token)
    return tuple(tokens)


# Metadata repeats the same short strings (ontology labels, enumerations) across documents: caching
# their tokens saves most of the analysis time. Bounded by clearing, which is cheap and rare.
_TOKEN_CACHE: dict[str, tuple[str, ...]] = {}
_TOKEN_CACHE_LIMIT = 200_000


def tokenize(text: str) -> tuple[str, ...]:
    """Standard-analyzer tokens of `text`, lower-cased, in order."""
    tokens = _TOKEN_CACHE.get(text)
    if tokens is not None:
        return tokens
    if text.isascii() and len(text) <= MAX_TOKEN_LENGTH:
        if text.isalnum():
            tokens = (text.lower(),)  # one plain word (hashes, enumerations): no segmentation needed
        elif not _JOINERS.search(text):
            # ASCII without characters that can join words (uuids, names): words are runs of \w
            tokens = tuple(word for word in _ASCII_WORD.findall(text.lower()) if word.strip("_"))
        else:
            tokens = _segment(text)
    else:
        tokens = _segment(text)
    if len(text) <= IGNORE_ABOVE:
        if len(_TOKEN_CACHE) >= _TOKEN_CACHE_LIMIT:
            _TOKEN_CACHE.clear()
        _TOKEN_CACHE[text] = tokens
    return tokens


def normalise_keyword(value: str) -> str:
    return value.lower()


def keyword_text(value: Any) -> str | None:
    """The string a scalar becomes in a keyword field (numbers and booleans as their JSON text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return None


def float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def parse_long(value: Any) -> int | float:
    """A value for a `long` field; strings are parsed. Returns the exact number, possibly fractional."""
    if isinstance(value, bool):
        raise ValueError(f"[{value}] is not a number")
    if isinstance(value, int):
        number: int | float = value
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        number = _number_from_text(value)
    else:
        raise ValueError(f"[{value}] is not a number")
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"[{value}] is not a finite number")
    if not _LONG_MIN <= number <= _LONG_MAX:
        raise ValueError(f"Value [{value}] is out of range for a long")
    return number


def _number_from_text(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"For input string: \"{text}\"") from None


def parse_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"[{value}] is not a number")
    number = float(_number_from_text(value)) if isinstance(value, str) else float(value)
    if not math.isfinite(number):
        raise ValueError(f"[{value}] is not a finite number")
    return float32(number)


def parse_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value == "true":
        return True
    if value in ("false", ""):
        return False
    raise ValueError(f"Failed to parse value [{value}] as only [true] or [false] are allowed.")


# ---------------------------------------------------------------------------------------------- dates

_DATE = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2}))?)?"
    r"(?:T(?:(?P<hour>\d{2})(?::(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?)?)?"
    r"(?P<zone>Z|[+-]\d{2}(?::?\d{2})?)?)?$"
)
_MATH_STEP = re.compile(r"([+-])(\d*)([yMwdhHms])|/([yMwdhHms])")
_UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)


def parse_time_zone(name: str | None) -> dt.tzinfo:
    if name in (None, "", "Z", "UTC", "utc"):
        return _UTC
    offset = re.match(r"^([+-])(\d{2}):?(\d{2})?$", name)
    if offset:
        sign = -1 if offset.group(1) == "-" else 1
        delta = dt.timedelta(hours=int(offset.group(2)), minutes=int(offset.group(3) or 0))
        return dt.timezone(sign * delta)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise DateError(f"unknown time zone [{name}]") from None


def looks_like_date(text: str) -> bool:
    """Would Elasticsearch's date detection map a new field holding `text` as a date?"""
    if not text[:1].isdigit() or _is_number(text):
        return False
    try:
        parse_date(text)
    except DateError:
        return False
    return True


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _zone_of(text: str | None, default: dt.tzinfo) -> dt.tzinfo:
    if not text:
        return default
    return parse_time_zone(text if text == "Z" else text[:3] + ":" + (text[3:].lstrip(":") or "00"))


def _date_fields(match: re.Match[str], round_up: bool) -> tuple[int, int, int, int, int, int, int]:
    def field(name: str, low: int, high: int) -> int:
        text = match.group(name)
        return int(text) if text is not None else (high if round_up else low)
    fraction = match.group("fraction")
    if fraction is not None:
        micros = int((fraction + "000000")[:6])
        micros -= micros % 1000  # Elasticsearch keeps milliseconds
    else:
        micros = 999000 if round_up else 0
    # Missing month and day are 1 even when rounding up: that is what Elasticsearch does.
    return (int(match.group("year")), int(match.group("month") or 1), int(match.group("day") or 1),
            field("hour", 0, 23), field("minute", 0, 59), field("second", 0, 59), micros)


def parse_date(text: str, *, round_up: bool = False, zone: dt.tzinfo = _UTC) -> int:
    """Epoch milliseconds of a `strict_date_optional_time` string; missing parts round as in ES ranges."""
    match = _DATE.match(text)
    if not match:
        raise DateError(f"failed to parse date field [{text}] with format [strict_date_optional_time]")
    try:
        moment = dt.datetime(*_date_fields(match, round_up), tzinfo=_zone_of(match.group("zone"), zone))
    except (ValueError, DateError) as error:
        raise DateError(f"failed to parse date field [{text}]: {error}") from None
    return _millis(moment)


def _millis(moment: dt.datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _from_millis(millis: int, zone: dt.tzinfo) -> dt.datetime:
    return (_EPOCH + dt.timedelta(milliseconds=millis)).astimezone(zone)


def parse_date_math(text: str, *, round_up: bool, zone: dt.tzinfo, now: Callable[[], int]) -> int:
    """A date with optional math: `now`, `now-1d/d`, `2019-05-15||+1M/M`, or a plain date."""
    if text.startswith("now"):
        anchor, math_part = now(), text[3:]
    elif "||" in text:
        date_text, math_part = text.split("||", 1)
        anchor = parse_date(date_text, zone=zone)
    else:
        return parse_date(text, round_up=round_up, zone=zone)
    if not math_part:
        return anchor
    return _millis(_apply_math(_from_millis(anchor, zone), math_part, round_up, text))


def _apply_math(moment: dt.datetime, math_part: str, round_up: bool, text: str) -> dt.datetime:
    position = 0
    while position < len(math_part):
        step = _MATH_STEP.match(math_part, position)
        if not step:
            raise DateError(f"failed to parse date math [{text}]")
        sign, amount, unit, round_unit = step.groups()
        if round_unit:
            moment = _round(moment, round_unit, round_up)
        else:
            moment = _shift(moment, unit, int(amount or 1) * (-1 if sign == "-" else 1))
        position = step.end()
    return moment


def _shift(moment: dt.datetime, unit: str, amount: int) -> dt.datetime:
    if unit in "yM":
        months = moment.month - 1 + amount * (12 if unit == "y" else 1)
        year, month = moment.year + months // 12, months % 12 + 1
        day = min(moment.day, calendar.monthrange(year, month)[1])
        return moment.replace(year=year, month=month, day=day)
    seconds = {"w": 604800, "d": 86400, "h": 3600, "H": 3600, "m": 60, "s": 1}[unit]
    return moment + dt.timedelta(seconds=seconds * amount)


def _round(moment: dt.datetime, unit: str, round_up: bool) -> dt.datetime:
    floor = _floor(moment, unit)
    if not round_up:
        return floor
    return _shift(floor, unit if unit != "H" else "h", 1) - dt.timedelta(milliseconds=1)


def _floor(moment: dt.datetime, unit: str) -> dt.datetime:
    start = moment.replace(microsecond=0)
    if unit == "s":
        return start
    start = start.replace(second=0)
    if unit == "m":
        return start
    start = start.replace(minute=0)
    if unit in "hH":
        return start
    start = start.replace(hour=0)
    if unit == "d":
        return start
    if unit == "w":
        return start - dt.timedelta(days=start.weekday())
    start = start.replace(day=1)
    return start if unit == "M" else start.replace(month=1)

"""Typed config loading: YAML in, a validated msgspec ``Struct`` out, all mistakes reported at once.

``msgspec.convert`` stops at the first bad value, which turns fixing a config into a loop of
edit-and-retry. :func:`validate` instead walks the target type (``msgspec.inspect.type_info``)
and the data side by side and collects a :class:`Problem` for each unknown key, missing field,
wrong type, violated ``msgspec.Meta`` constraint or bad ``Literal`` value, then raises one
:class:`ConfigError` listing them all. Only when the walk finds nothing is the data handed to
``msgspec.convert``, which builds the Struct (defaults, ``__post_init__``).

:func:`load` is the entry point for commands: read the YAML file, lay command-line overrides on
top (:func:`set_path`), validate. Nothing here opens a connection or starts a thread.
"""

from __future__ import annotations

import datetime
import decimal
import difflib
import re
import uuid
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi
import yaml

from outpost.connection import BROKER_URL_PATTERN
from outpost.errors import OutpostError
from outpost.wire import SLUG_RE

__all__ = [
    "COMMAND_LINE",
    "FLAGS_ONLY",
    "ConfigError",
    "Problem",
    "load",
    "load_yaml",
    "set_path",
    "validate",
]

T = TypeVar("T")

COMMAND_LINE = "<command line>"
"""File name reported for problems caused by a command-line override."""

FLAGS_ONLY = "<flags>"
"""File name reported when there is no config file, only flags and defaults."""

_MAX_REPR = 40
_MAX_KEYS_LISTED = 12
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_PATH_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_FOLLOWABLE = re.compile(r"(?:[^.\[\]]+|\[\d+\])?(?:\.[^.\[\]]+|\[\d+\])*")
# Patterns said in words: a user should not have to read a regular expression.
_PATTERN_WORDS = {
    SLUG_RE.pattern: "a slug: 1 to 63 lower-case letters, digits or '-', not starting with '-'",
    BROKER_URL_PATTERN: "mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS",
}


class Problem(msgspec.Struct, frozen=True):
    """One mistake in a config: where it is, what was there, what should have been."""

    file: str
    """The config file, or ``<command line>`` / ``<flags>``."""
    path: str
    """Key path like ``broker.url`` or ``sources.system.exclude_fstypes[2]``; ``""`` is the root."""
    found: str
    """Short description of what was there: ``'abc' (str)``, ``missing``, ``unknown key``."""
    expected: str
    """What would have been accepted: ``an integer >= 1``, ``one of 'text', 'json'``."""

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""  # "": the file as a whole
        return f"{self.file}: {where}found {self.found}, expected {self.expected}"


class ConfigError(OutpostError):
    """A config that cannot be used; ``problems`` lists every mistake found, in file order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


# --------------------------------------------------------------------------------------------
# YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = self.construct_object(key_node)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(file: str, exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or "syntax error"
    if mark is not None:
        found = f"invalid YAML at line {mark.line + 1}, column {mark.column + 1} ({what})"
    else:
        found = f"invalid YAML ({what})"
    return Problem(file, "", found, "valid YAML")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file into a dict; an empty file is ``{}``.

    Raises :class:`ConfigError` (one :class:`Problem`) when the file is missing or unreadable,
    is not valid YAML (the line and column are in ``found``), or its top level is not a mapping.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(file, "", "no such file", "a readable YAML file")]) from None
    except UnicodeDecodeError as exc:
        found = f"bytes that are not UTF-8 at offset {exc.start}"
        raise ConfigError([Problem(file, "", found, "a UTF-8 text file")]) from None
    except OSError as exc:
        found = f"an unreadable file ({exc.strerror or exc})"
        raise ConfigError([Problem(file, "", found, "a readable YAML file")]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(file, exc)]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, "", _found(data), "a mapping")])
    return data


# --------------------------------------------------------------------------------------------
# Describing values and types


def _scalar(value: Any) -> str:
    """A value as the YAML author would write it (``true``, ``null``, ``'abc'``, ``5``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return text


def _found(value: Any) -> str:
    """Short description of a value for ``Problem.found``."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"{_scalar(value)} ({type(value).__name__})"


def _join_or(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    parts = []
    if t.ge is not None:
        parts.append(f">= {t.ge}")
    if t.gt is not None:
        parts.append(f"> {t.gt}")
    if t.le is not None:
        parts.append(f"<= {t.le}")
    if t.lt is not None:
        parts.append(f"< {t.lt}")
    if t.multiple_of is not None:
        parts.append(f"a multiple of {t.multiple_of}")
    return (" " + " and ".join(parts)) if parts else ""


def _count(min_length: int | None, max_length: int | None) -> str:
    """``at least 2 ``, ``1 to 5 ``, ``exactly 3 `` or ``""`` (``non-empty`` is said elsewhere)."""
    if min_length is not None and max_length is not None:
        if min_length == max_length:
            return f"exactly {min_length} "
        return f"{min_length} to {max_length} "
    if min_length is not None and min_length > 1:
        return f"at least {min_length} "
    if max_length is not None:
        return f"at most {max_length} "
    return ""


def _sized(one: str, many: str, plural: bool, t: Any) -> str:
    """``a list``, ``lists``, ``a non-empty list``, ``non-empty lists``."""
    non_empty = "non-empty " if t.min_length == 1 and t.max_length is None else ""
    if plural:
        return f"{non_empty}{many}"
    return f"a {non_empty}{one}"


def _describe(t: mi.Type, plural: bool = False) -> str:
    """What a type accepts, in words: ``an integer >= 1``, ``a list of strings``."""

    def noun(one: str, many: str) -> str:
        return many if plural else one

    if isinstance(t, mi.AnyType):
        return noun("any value", "values")
    if isinstance(t, mi.NoneType):
        return noun("null", "nulls")
    if isinstance(t, mi.BoolType):
        return noun("a boolean", "booleans")
    if isinstance(t, mi.IntType):
        return noun("an integer", "integers") + _bounds(t)
    if isinstance(t, mi.FloatType):
        return noun("a number", "numbers") + _bounds(t)
    if isinstance(t, mi.StrType):
        words = _PATTERN_WORDS.get(t.pattern or "") if not plural else None
        text = _sized("string", "strings", plural, t)
        count = _count(t.min_length, t.max_length)
        if count:
            text += f" of {count}characters"
        if t.pattern is not None:
            text += f" matching {t.pattern}"
        return f"{words} ({text})" if words else text
    if isinstance(t, mi.LiteralType | mi.EnumType):
        values = _choices(t)
        if len(values) == 1:
            return _scalar(values[0])
        listed = ", ".join(_scalar(v) for v in values)
        return f"values among {listed}" if plural else f"one of {listed}"
    if isinstance(t, mi.UnionType):
        return _join_or([_describe(m, plural) for m in t.types])
    if isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType):
        unique = "unique " if isinstance(t, mi.SetType | mi.FrozenSetType) else ""
        text = _sized("list", "lists", plural, t)
        count = _count(t.min_length, t.max_length)
        if isinstance(t.item_type, mi.AnyType):
            return f"{text} of {count}items" if count else text
        return f"{text} of {count}{unique}{_describe(t.item_type, plural=True)}"
    if isinstance(t, mi.TupleType):
        return f"{noun('a list', 'lists')} of exactly {len(t.item_types)} items"
    if isinstance(t, mi.DictType):
        text = _sized("mapping", "mappings", plural, t)
        if not isinstance(t.value_type, mi.AnyType):
            text += f" of {_describe(t.key_type, True)} to {_describe(t.value_type, True)}"
        count = _count(t.min_length, t.max_length)
        return f"{text} ({count}entries)" if count else text
    if isinstance(t, mi.StructType | mi.DataclassType | mi.TypedDictType):
        return noun("a mapping", "mappings")
    if isinstance(t, mi.DateTimeType):
        return noun("a date and time", "dates and times") + " (ISO 8601)"
    if isinstance(t, mi.DateType):
        return noun("a date", "dates") + " (YYYY-MM-DD)"
    if isinstance(t, mi.TimeType):
        return noun("a time", "times") + " (HH:MM:SS)"
    if isinstance(t, mi.TimeDeltaType):
        return noun("a duration", "durations") + " (ISO 8601, e.g. PT30S)"
    if isinstance(t, mi.UUIDType):
        return noun("a UUID", "UUIDs")
    if isinstance(t, mi.DecimalType):
        return noun("a decimal number", "decimal numbers")
    return noun("a valid value", "valid values")


def _choices(t: mi.LiteralType | mi.EnumType) -> list[Any]:
    if isinstance(t, mi.LiteralType):
        return list(t.values)
    return [member.value for member in t.cls]


def _same_value(a: Any, b: Any) -> bool:
    """Equality that keeps ``True`` apart from ``1`` and ``1`` apart from ``1.0``."""
    return type(a) is type(b) and bool(a == b)


def _key_path(parent: str, key: Any) -> str:
    if isinstance(key, str) and _PLAIN_KEY.match(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{_scalar(key)}]"


def _index_path(parent: str, index: int) -> str:
    return f"{parent}[{index}]"


# --------------------------------------------------------------------------------------------
# The walk

_MAPPING_TYPES = (mi.StructType, mi.DataclassType, mi.TypedDictType, mi.DictType)
_SEQUENCE_TYPES = (mi.ListType, mi.VarTupleType, mi.SetType, mi.FrozenSetType, mi.TupleType)
_CONVERTED: dict[type, type] = {
    mi.DateTimeType: datetime.datetime,
    mi.DateType: datetime.date,
    mi.TimeType: datetime.time,
    mi.TimeDeltaType: datetime.timedelta,
    mi.UUIDType: uuid.UUID,
    mi.DecimalType: decimal.Decimal,
}


class _Walker:
    """Walks a ``msgspec.inspect`` type and a value together, collecting problems."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def add(self, path: str, found: str, expected: str) -> None:
        self.problems.append(Problem(self.file, path, found, expected))

    def check(self, t: mi.Type, value: Any, path: str) -> None:
        if isinstance(t, mi.AnyType):
            return
        if isinstance(t, mi.UnionType):
            self.check_union(t, value, path)
        elif isinstance(t, mi.StructType | mi.DataclassType | mi.TypedDictType):
            self.check_fields(t, value, path)
        elif isinstance(t, mi.DictType):
            self.check_dict(t, value, path)
        elif isinstance(t, _SEQUENCE_TYPES):
            self.check_sequence(t, value, path)
        elif isinstance(t, mi.IntType | mi.FloatType):
            self.check_number(t, value, path)
        elif isinstance(t, mi.StrType):
            self.check_str(t, value, path)
        elif isinstance(t, mi.BoolType):
            if not isinstance(value, bool):
                self.add(path, _found(value), _describe(t))
        elif isinstance(t, mi.NoneType):
            if value is not None:
                self.add(path, _found(value), _describe(t))
        elif isinstance(t, mi.LiteralType | mi.EnumType):
            if not any(_same_value(value, choice) for choice in _choices(t)):
                self.add(path, _found(value), _describe(t))
        elif type(t) in _CONVERTED:
            try:
                msgspec.convert(value, _CONVERTED[type(t)])
            except msgspec.ValidationError:
                self.add(path, _found(value), _describe(t))
        # Anything else (custom types, named tuples, ...) is left to the final msgspec.convert.

    def check_number(self, t: mi.IntType | mi.FloatType, value: Any, path: str) -> None:
        if not _kind_matches(t, value):
            self.add(path, _found(value), _describe(t))
            return
        # Written as "not (ok)" so that NaN fails every bound, as it does in msgspec.
        bad = (
            (t.ge is not None and not value >= t.ge)
            or (t.gt is not None and not value > t.gt)
            or (t.le is not None and not value <= t.le)
            or (t.lt is not None and not value < t.lt)
            or (isinstance(t, mi.IntType) and t.multiple_of is not None and value % t.multiple_of)
        )
        if bad:
            self.add(path, _found(value), _describe(t))

    def check_str(self, t: mi.StrType, value: Any, path: str) -> None:
        if not isinstance(value, str):
            self.add(path, _found(value), _describe(t))
            return
        if (
            (t.min_length is not None and len(value) < t.min_length)
            or (t.max_length is not None and len(value) > t.max_length)
            or (t.pattern is not None and not re.search(t.pattern, value))
        ):
            self.add(path, _found(value), _describe(t))

    def check_length(
        self, t: Any, value: dict[Any, Any] | list[Any] | tuple[Any, ...], path: str
    ) -> bool:
        min_length: int | None = t.min_length
        max_length: int | None = t.max_length
        if (min_length is not None and len(value) < min_length) or (
            max_length is not None and len(value) > max_length
        ):
            noun = "entries" if isinstance(value, dict) else "items"
            found = f"{_found(value)} of {len(value)} {noun}"
            self.add(path, found, _describe(t))
            return False
        return True

    def check_sequence(self, t: mi.Type, value: Any, path: str) -> None:
        if not isinstance(value, list | tuple):
            self.add(path, _found(value), _describe(t))
            return
        if isinstance(t, mi.TupleType):
            if len(value) != len(t.item_types):
                self.add(path, f"a list of {len(value)} items", _describe(t))
                return
            for index, (item_type, item) in enumerate(zip(t.item_types, value, strict=True)):
                self.check(item_type, item, _index_path(path, index))
            return
        assert isinstance(t, mi.ListType | mi.VarTupleType | mi.SetType | mi.FrozenSetType)
        self.check_length(t, value, path)
        for index, item in enumerate(value):
            self.check(t.item_type, item, _index_path(path, index))

    def check_dict(self, t: mi.DictType, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            self.add(path, _found(value), _describe(t))
            return
        self.check_length(t, value, path)
        for key, item in value.items():
            item_path = _key_path(path, key)
            keys = _Walker(self.file)
            keys.check(t.key_type, key, item_path)
            if keys.problems:
                self.add(item_path, f"key {_found(key)}", f"{_describe(t.key_type)} as key")
            self.check(t.value_type, item, item_path)

    def check_fields(
        self, t: mi.StructType | mi.DataclassType | mi.TypedDictType, value: Any, path: str
    ) -> None:
        if not isinstance(value, dict):
            self.add(path, _found(value), _describe(t))
            return
        fields = {f.encode_name: f for f in t.fields}
        tag_field = t.tag_field if isinstance(t, mi.StructType) else None
        for key, item in value.items():
            item_path = _key_path(path, key)
            if tag_field is not None and key == tag_field:
                assert isinstance(t, mi.StructType)
                if not _same_value(item, t.tag):
                    self.add(item_path, _found(item), _scalar(t.tag))
            elif isinstance(key, str) and key in fields:
                self.check(fields[key].type, item, item_path)
            else:
                self.add(item_path, "unknown key", _known_keys(key, list(fields)))
        for name, field in fields.items():
            if field.required and name not in value:
                self.add(_key_path(path, name), "missing", _describe(field.type))

    def check_union(self, t: mi.UnionType, value: Any, path: str) -> None:
        candidates = [m for m in t.types if _kind_matches(m, value)]
        if not candidates:
            self.add(path, _found(value), _describe(t))
            return
        structs = [m for m in candidates if isinstance(m, mi.StructType) and m.tag_field]
        if isinstance(value, dict) and structs:
            # A tagged union: the tag picks the member, and a bad tag is the one problem.
            chosen = [m for m in structs if _same_value(value.get(m.tag_field), m.tag)]
            if not chosen:
                tag_field = structs[0].tag_field
                tag_path = _key_path(path, tag_field)
                found = _found(value[tag_field]) if tag_field in value else "missing"
                tags = ", ".join(_scalar(m.tag) for m in structs)
                self.add(tag_path, found, f"one of {tags}" if len(structs) > 1 else tags)
                return
            candidates = [chosen[0]]
        attempts: list[list[Problem]] = []
        for member in candidates:
            walker = _Walker(self.file)
            walker.check(member, value, path)
            if not walker.problems:
                return
            attempts.append(walker.problems)
        if len(candidates) == 1 and isinstance(candidates[0], _MAPPING_TYPES + _SEQUENCE_TYPES):
            self.problems.extend(attempts[0])  # one container fits: report inside it
        else:
            self.add(path, _found(value), _describe(t))


def _kind_matches(t: mi.Type, value: Any) -> bool:
    """Whether ``value`` has the right Python kind for ``t`` (ignoring constraints)."""
    if isinstance(t, mi.NoneType):
        return value is None
    if isinstance(t, mi.BoolType):
        return isinstance(value, bool)
    if isinstance(t, mi.IntType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(t, mi.FloatType):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(t, mi.StrType):
        return isinstance(value, str)
    if isinstance(t, mi.LiteralType | mi.EnumType):
        return any(type(choice) is type(value) for choice in _choices(t))
    if isinstance(t, _MAPPING_TYPES):
        return isinstance(value, dict)
    if isinstance(t, _SEQUENCE_TYPES):
        return isinstance(value, list | tuple)
    return value is not None  # Any, dates, custom types: let the member decide


def _known_keys(key: Any, known: list[str]) -> str:
    if not known:
        return "no keys here"
    close = difflib.get_close_matches(str(key), known, n=1) if isinstance(key, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if len(known) > _MAX_KEYS_LISTED:
        return f"a known key{hint}"
    return f"one of {', '.join(repr(k) for k in known)}{hint}"


def _value_at(data: Any, path: str) -> tuple[bool, Any]:
    """Follow a ``a.b[0]`` path into ``data``; ``(False, None)`` when it cannot be followed."""
    if not _FOLLOWABLE.fullmatch(path):
        return False, None
    current = data
    for name, index in _PATH_STEP.findall(path):
        try:
            current = current[name] if name else current[int(index)]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, current


def _from_msgspec(file: str, data: Any, exc: msgspec.ValidationError) -> Problem:
    """One Problem from an error msgspec raised after our walk passed (e.g. ``__post_init__``)."""
    message = str(exc)
    path = ""
    match = _MSGSPEC_PATH.search(message)
    if match is not None:
        message = message[: match.start()]
        path = match.group("path").lstrip(".")
    ok, value = _value_at(data, path)
    found = _found(value) if ok else "an invalid value"
    return Problem(file, path, found, f"a valid value ({message})")


def validate(data: Any, type_: type[T], file: str) -> T:
    """Check ``data`` against ``type_`` and build it, or raise :class:`ConfigError`.

    Every problem is collected before raising: unknown keys (always, whatever the Struct's
    ``forbid_unknown_fields``), missing required fields, wrong types (``bool`` is not an
    integer; an integer is a fine number), ``msgspec.Meta`` bounds, lengths and patterns,
    ``Literal`` values, optional and union members, list and tuple items, mapping values and
    nested Structs. ``file`` is only used to label the problems.
    """
    walker = _Walker(file)
    walker.check(mi.type_info(type_), data, "")
    if walker.problems:
        raise ConfigError(walker.problems)
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise ConfigError([_from_msgspec(file, data, exc)]) from None


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted="a.b"``, creating mappings on the way.

    An intermediate key that holds something other than a mapping is replaced: the command line
    wins over the file.
    """
    keys = dotted.split(".")
    if not all(keys):
        raise ValueError(f"bad key path {dotted!r}")
    current = data
    for key in keys[:-1]:
        child = current.get(key)
        if not isinstance(child, dict):
            child = current[key] = {}
        current = child
    current[keys[-1]] = value


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def load(path: str | Path | None, type_: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Load a config: the YAML file at ``path`` (or nothing), then ``overrides``, validated.

    ``overrides`` maps dotted key paths (``"broker.url"``) to values from command-line flags;
    ``None`` values (flag not given) are skipped. Problems at or under an override's path are
    reported against ``<command line>``; the rest against the file (``<flags>`` without one).
    """
    file = FLAGS_ONLY if path is None else str(path)
    data: dict[str, Any] = {} if path is None else load_yaml(path)
    applied = {key: value for key, value in (overrides or {}).items() if value is not None}
    for key, value in applied.items():
        set_path(data, key, value)
    try:
        return validate(data, type_, file)
    except ConfigError as exc:
        problems = [
            msgspec.structs.replace(p, file=COMMAND_LINE)
            if any(_under(p.path, key) for key in applied)
            else p
            for p in exc.problems
        ]
        raise ConfigError(problems) from None

"""Canonical encodings of standard-library values: times, paths, numbers, callables, code.

Each handler writes a one-byte tag, then self-delimiting parts (see :mod:`nbcache.keys.digest`).
Functions digest by their code fingerprint (:mod:`nbcache.keys.fingerprint`), so an edited function
passed as an argument changes the key.
"""

from __future__ import annotations

import collections
import collections.abc
import datetime
import decimal
import fractions
import functools
import pathlib
import pickle
import re
import types
from typing import Any

from nbcache.keys.digest import Handler, TokenWriter, register_handler, write_type
from nbcache.keys.provenance import module_version


def _tzinfo(writer: TokenWriter, tz: datetime.tzinfo | None, moment: Any) -> None:
    """A time zone as what it means at ``moment``: its name, offset and DST, plus its key."""
    if tz is None:
        writer.raw(b"N")
        return
    writer.raw(b"Z")
    writer.text(type(tz).__module__ + "." + type(tz).__qualname__)
    writer.value(getattr(tz, "key", None) or getattr(tz, "zone", None))
    writer.value(tz.utcoffset(moment))
    writer.value(tz.dst(moment))
    writer.value(tz.tzname(moment))


def _datetime(writer: TokenWriter, value: datetime.datetime) -> None:
    writer.raw(b"D")
    for part in (value.year, value.month, value.day, value.hour, value.minute, value.second):
        writer.value(part)
    writer.value(value.microsecond)
    writer.value(value.fold)
    _tzinfo(writer, value.tzinfo, value)


def _date(writer: TokenWriter, value: datetime.date) -> None:
    writer.raw(b"A")
    writer.value((value.year, value.month, value.day))


def _time(writer: TokenWriter, value: datetime.time) -> None:
    writer.raw(b"H")
    writer.value((value.hour, value.minute, value.second, value.microsecond, value.fold))
    _tzinfo(writer, value.tzinfo, None)


def _timedelta(writer: TokenWriter, value: datetime.timedelta) -> None:
    writer.raw(b"J")
    writer.value((value.days, value.seconds, value.microseconds))


def _timezone(writer: TokenWriter, value: datetime.timezone) -> None:
    writer.raw(b"K")
    _tzinfo(writer, value, None)


def _path(writer: TokenWriter, value: pathlib.PurePath) -> None:
    writer.raw(b"P")
    writer.text(type(value).__qualname__)  # PosixPath and WindowsPath parse differently
    writer.text(str(value))


def _decimal(writer: TokenWriter, value: decimal.Decimal) -> None:
    # the exact tuple: Decimal("1.0") and Decimal("1.00") print differently
    sign, digits, exponent = value.as_tuple()
    writer.raw(b"Q")
    writer.value((sign, digits, exponent))


def _fraction(writer: TokenWriter, value: fractions.Fraction) -> None:
    writer.raw(b"q")
    writer.value((value.numerator, value.denominator))


def _range(writer: TokenWriter, value: range) -> None:
    writer.raw(b"r")
    writer.value((value.start, value.stop, value.step))


def _slice(writer: TokenWriter, value: slice) -> None:
    writer.raw(b"L")
    writer.value((value.start, value.stop, value.step))


def _type(writer: TokenWriter, value: type) -> None:
    write_type(writer, value)


def _module(writer: TokenWriter, value: types.ModuleType) -> None:
    writer.raw(b"W")
    writer.text(value.__name__)
    writer.value(module_version(value))


def _builtin_function(writer: TokenWriter, value: types.BuiltinFunctionType) -> None:
    owner = value.__self__
    if owner is None or isinstance(owner, types.ModuleType):
        writer.raw(b"u")
        writer.text(value.__module__ or getattr(owner, "__name__", ""))
    else:  # a bound method of a builtin object: [].append
        writer.raw(b"v")
        writer.value(owner)
    writer.text(value.__qualname__)


def _method(writer: TokenWriter, value: types.MethodType) -> None:
    writer.raw(b"M")
    writer.value(value.__self__)
    writer.value(value.__func__)


def _wrapped_callable(tag: bytes) -> Handler:
    def wrapped(writer: TokenWriter, value: Any) -> None:
        writer.raw(tag)
        writer.value(value.__func__)

    return wrapped


def _partial(writer: TokenWriter, value: functools.partial[Any]) -> None:
    writer.raw(b"p")
    writer.value(value.func)
    writer.value(value.args)
    writer.value(value.keywords)
    writer.value(dict(vars(value)))


def _pattern(writer: TokenWriter, value: re.Pattern[Any]) -> None:
    writer.raw(b"x")
    writer.value(value.pattern)
    writer.value(value.flags)


def _pickle_buffer(writer: TokenWriter, value: pickle.PickleBuffer) -> None:
    view = value.raw()  # the out-of-band buffer as it lies in memory, not copied
    writer.raw(b"B")
    writer.sized(view)


def _ordered_dict(writer: TokenWriter, value: collections.OrderedDict[Any, Any]) -> None:
    if not writer.enter(value):
        return
    writer.raw(b"o")
    writer.count(len(value))
    for key, item in value.items():
        writer.value(key)
        writer.value(item)
    writer.leave(value)


def _default_dict(writer: TokenWriter, value: collections.defaultdict[Any, Any]) -> None:
    writer.raw(b"g")
    writer.value(value.default_factory)
    writer.value(dict(value))


def _singleton(tag: bytes) -> Handler:
    def singleton(writer: TokenWriter, value: object) -> None:
        writer.raw(tag)

    return singleton


def _install() -> None:
    for type_, handler in (
        (datetime.datetime, _datetime),
        (datetime.date, _date),
        (datetime.time, _time),
        (datetime.timedelta, _timedelta),
        (datetime.timezone, _timezone),
        (pathlib.PurePath, _path),
        (decimal.Decimal, _decimal),
        (fractions.Fraction, _fraction),
        (range, _range),
        (slice, _slice),
        (type, _type),
        (types.ModuleType, _module),
        (types.BuiltinFunctionType, _builtin_function),
        (types.MethodType, _method),
        (staticmethod, _wrapped_callable(b"h")),
        (classmethod, _wrapped_callable(b"j")),
        (functools.partial, _partial),
        (re.Pattern, _pattern),
        (pickle.PickleBuffer, _pickle_buffer),
        (collections.OrderedDict, _ordered_dict),
        (collections.defaultdict, _default_dict),
        (type(...), _singleton(b".")),
        (type(NotImplemented), _singleton(b"n")),
    ):
        register_handler(
            type_, handler, builtin=type_ is not type and type_ is not pathlib.PurePath
        )


_install()

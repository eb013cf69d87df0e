"""Cache keys of function calls: pure functions of the function and its bound arguments.

A call key is ``nbcache.fn/3:<module>:<qualname>:<digest>``, where the digest covers the
code fingerprint, ``version=``, the digests of the global data the code reads, and the
canonical digest of every bound argument by name (defaults applied, so ``f(1)`` and
``f(1, b=2)`` with ``b=2`` as default share a key; keyword order is irrelevant: arguments are
bound in parameter order; ``ignore=`` names are left out). With ``key=``, the digest of
``key(*args, **kwargs)`` stands for the arguments. Nothing here does I/O.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import xxhash

from nbcache.exceptions import UnhashableValue
from nbcache.keys.digest import value_digest

#: 3: entries record the files, environment variables and random state a call used.
KEY_FORMAT = "nbcache.fn/3"
#: The name under which a ``key=`` callable's result appears in explanations.
CUSTOM_KEY_NAME = "key()"


class UnhashableArgument(UnhashableValue):
    """An argument of a call has no digest, so the call cannot be keyed.

    ``argument`` names the parameter; ``type_name`` and ``reason`` come from the value.
    """

    def __init__(self, argument: str, cause: UnhashableValue) -> None:
        super().__init__(cause.type_name, cause.reason)
        self.argument = argument
        self.args = (f"argument `{argument}`: {cause}",)


class CallKey(NamedTuple):
    """A call's cache key and what went into it (recorded for explanations)."""

    key: str
    code: str
    version: str | None
    arguments: dict[str, str]
    global_inputs: dict[str, str]


# Builds a CallKey from a tuple in C: it runs on every call.
_new_call_key = tuple.__new__


class CallKeyBuilder:
    """Builds the keys of one function's calls.

    ``ignore`` names parameters left out of the key (a ``ValueError`` names any that the
    function does not have); ``version`` is any value nbcache can digest; ``key`` a callable
    taking the function's arguments and returning a digestable value that stands for them.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        ignore: Iterable[str] = (),
        version: object = None,
        key: Callable[..., object] | None = None,
    ) -> None:
        self.signature = inspect.signature(func)
        self.ignore = frozenset(ignore)
        unknown = self.ignore - set(self.signature.parameters)
        if unknown:
            raise ValueError(
                f"ignore= names {sorted(unknown)} that {func.__qualname__}() does not take; "
                f"its parameters: {list(self.signature.parameters)}"
            )
        self.custom_key = key
        self.version = None if version is None else value_digest(version)
        module = getattr(func, "__module__", None) or "__main__"
        self.function_id = f"{KEY_FORMAT}:{module}:{func.__qualname__}"
        self._key_prefix = self.function_id + ":"
        #: Where the function's generation token lives (``cache_clear`` replaces it): a raw
        #: token (:meth:`nbcache.entries.entry_store.EntryStore.set_token`).
        self.generation_key = f"{self.function_id}#generation-token"
        #: Where the records of the function's recent entries live (for explanations).
        self.records_key = f"{self.function_id}#recent"
        self._has_defaults = any(
            p.default is not p.empty for p in self.signature.parameters.values()
        )
        self._simple = _SimpleSignature.of(self.signature)

    def bound_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments by parameter name, defaults applied, ignored names left out.

        Raises ``TypeError`` if the arguments do not fit the signature (as the call would).
        """
        simple = self._simple
        arguments = None if simple is None else simple.bind(args, kwargs)
        if arguments is None:
            bound = self.signature.bind(*args, **kwargs)
            if self._has_defaults:
                bound.apply_defaults()
            arguments = bound.arguments
        if self.ignore:
            return {name: value for name, value in arguments.items() if name not in self.ignore}
        return arguments

    def argument_digests(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, str]:
        """Each argument's digest by name; raises :class:`UnhashableArgument`."""
        if self.custom_key is not None:
            try:
                return {CUSTOM_KEY_NAME: value_digest(self.custom_key(*args, **kwargs))}
            except UnhashableValue as cause:
                raise UnhashableArgument(CUSTOM_KEY_NAME, cause) from None
        digests = {}
        for name, value in self.bound_arguments(args, kwargs).items():
            try:
                digests[name] = value_digest(value)
            except UnhashableValue as cause:
                raise UnhashableArgument(name, cause) from None
        return digests

    def build(
        self,
        code: str,
        arguments: dict[str, str],
        global_inputs: dict[str, str] | None = None,
    ) -> CallKey:
        """The key from a code fingerprint, argument digests and global input digests.

        ``arguments`` in parameter order, as :meth:`argument_digests` gives them (that order
        is what makes keyword order irrelevant). The key keeps both dicts.
        """
        # The names, then the digests, one per line: names hold no newline and digests are
        # hex, so the text is unambiguous. Joined and hashed in C: this runs on every call.
        parts = [code, self.version or "-", *arguments, *arguments.values()]
        if global_inputs:
            parts.append("globals")
            parts += map("=".join, sorted(global_inputs.items()))
        digest = xxhash.xxh3_128_hexdigest("\n".join(parts).encode("utf-8", "surrogatepass"))
        material = (self._key_prefix + digest, code, self.version, arguments, global_inputs or {})
        return _new_call_key(CallKey, material)  # type: ignore[no-any-return]


_NO_DEFAULT = inspect.Parameter.empty
_PLAIN_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class _SimpleSignature:
    """Binds calls of a signature of plain parameters (no ``*args``, ``**kwargs`` or ``/``).

    ``Signature.bind`` plus ``apply_defaults`` costs microseconds per call; for such
    signatures binding is a walk over the names. The result equals theirs (same names, same
    order, defaults applied); :meth:`bind` returns None whenever a call does not plainly fit,
    so that ``Signature.bind`` raises the error the call would.
    """

    __slots__ = ("defaults", "names", "positional")

    def __init__(
        self, names: tuple[str, ...], defaults: tuple[object, ...], positional: int
    ) -> None:
        self.names = names
        self.defaults = defaults
        self.positional = positional  # keyword-only parameters follow the positional ones

    @classmethod
    def of(cls, signature: inspect.Signature) -> _SimpleSignature | None:
        parameters = list(signature.parameters.values())
        if any(p.kind not in _PLAIN_KINDS for p in parameters):
            return None
        positional = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters)
        return cls(
            tuple(p.name for p in parameters), tuple(p.default for p in parameters), positional
        )

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
        """The arguments by name in parameter order, defaults applied; None: use bind."""
        if len(args) > self.positional:
            return None
        names = self.names
        arguments = dict(zip(names, args, strict=False))
        used = 0
        for index in range(len(args), len(names)):
            name = names[index]
            if name in kwargs:
                arguments[name] = kwargs[name]
                used += 1
            else:
                default = self.defaults[index]
                if default is _NO_DEFAULT:
                    return None
                arguments[name] = default
        if used != len(kwargs):
            return None  # a keyword naming a positional argument given, or an unknown one
        return arguments

"""A store that is switched off: every operation is a fault, so every read is a miss.

Stands in for a store that must not be used (no usable signing secret, say): the layers above
turn each fault into a miss or a failed write without a warning of their own, and a cached
function runs its computation at once (a fault gives no lease to wait for).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from nbcache.exceptions import StoreFault
from nbcache.stores.api import Buffer, CasToken, NoValue


class UnavailableStore:
    """A :class:`~nbcache.stores.api.ByteStore` whose every operation raises ``StoreFault``.

    ``reason`` is the fault's message.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _fault(self) -> NoReturn:
        raise StoreFault(self.reason)

    def get(self, key: str) -> Buffer | NoValue:
        self._fault()

    def get_many(self, keys: Sequence[str]) -> list[Buffer | NoValue]:
        self._fault()

    def set(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        self._fault()

    def add(self, key: str, value: Sequence[Buffer], ttl: float | None) -> bool:
        self._fault()

    def gets(self, key: str) -> tuple[Buffer | NoValue, CasToken | None]:
        self._fault()

    def cas(self, key: str, value: Sequence[Buffer], ttl: float | None, token: CasToken) -> bool:
        self._fault()

    def delete(self, key: str) -> bool:
        self._fault()

    def clear(self) -> bool:
        self._fault()

    def close(self) -> None:
        pass

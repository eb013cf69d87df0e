"""Random tokens under fixed keys, created by whoever needs one first.

A namespace's generation and a cached function's generation are both a random token under a
fixed key: a reader treats a missing token as "nothing is current", and the first writer
creates one. Writers race: the first ``add`` wins and the others read back the winner's.
Something under the key that is not a token (planted by someone who can write to the server,
or corrupt) is replaced.
"""

from __future__ import annotations

from collections.abc import Callable

from nbcache.stores.api import Buffer, ByteStore, NoValue

#: Round trips before giving up: more than one is needed only if the key is evicted again
#: between an ``add`` that lost and the ``get`` that reads the winner's token.
ATTEMPTS = 3


def create_or_read_token(
    store: ByteStore,
    key: str,
    read: Callable[[Buffer | NoValue], bytes | None],
    fresh: Callable[[], bytes],
) -> bytes | None:
    """The token under ``key``, created if missing; None if none could be had.

    ``read`` turns what the store holds into a token, or None if it is missing or not a
    token; ``fresh`` makes a new random one. Store faults propagate.
    """
    for _ in range(ATTEMPTS):
        raw = store.get(key)
        current = read(raw)
        if current is not None:
            return current
        token = fresh()
        if isinstance(raw, NoValue):
            if store.add(key, [token], None):
                return token
            continue  # another writer created it first: read theirs
        if store.set(key, [token], None):
            return token
    return None

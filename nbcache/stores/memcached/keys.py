"""Map any string to a valid memcached key, without collisions.

memcached keys are at most 250 bytes with no whitespace or control characters. A key that is
already safe (printable ASCII, short enough) keeps its text behind the ``k:`` marker, so keys
stay readable in ``stats cachedump`` and ``memcached-tool``. Any other key becomes ``h:`` and
the hex BLAKE2b-160 of its UTF-8 encoding. The two markers keep the two kinds apart, so a
readable key can never equal a hashed one; hashed keys collide only if BLAKE2b does.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

#: memcached's limit on a key, in bytes.
MAX_KEY_BYTES: Final = 250
READABLE_MARKER: Final = "k:"
HASHED_MARKER: Final = "h:"
#: Longest key kept readable; the marker takes the rest of the 250 bytes.
MAX_READABLE_LENGTH: Final = MAX_KEY_BYTES - len(READABLE_MARKER)

# Printable ASCII without space: exactly the bytes memcached accepts that need no escaping.
_READABLE = re.compile(r"[\x21-\x7e]*")
#: Keys mapped recently (a hit maps three: two generations and the entry's key), as bytes.
_REMEMBERED = 4096
_remembered: dict[str, bytes] = {}


def memcached_name(key: str) -> bytes:
    """:func:`memcached_key` as the bytes sent on the wire, remembered for recent keys."""
    name = _remembered.get(key)
    if name is None:
        name = memcached_key(key).encode("ascii")
        if len(_remembered) >= _REMEMBERED:
            _remembered.clear()
        _remembered[key] = name
    return name


def memcached_key(key: str) -> str:
    """The memcached key for ``key``: ASCII, <= 250 bytes, no whitespace or controls.

    Pure and deterministic: the same input gives the same key in every process.
    """
    if len(key) <= MAX_READABLE_LENGTH and _READABLE.fullmatch(key):
        return READABLE_MARKER + key
    # surrogatepass: a str with lone surrogates (from os.fsdecode, say) is still a valid key,
    # and the encoding stays injective.
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=20)
    return HASHED_MARKER + digest.hexdigest()


def is_valid_memcached_key(key: str) -> bool:
    """True if memcached accepts ``key`` as it is."""
    return 0 < len(key) <= MAX_KEY_BYTES and _READABLE.fullmatch(key) is not None

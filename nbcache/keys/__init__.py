"""Keys: canonical value digests, code fingerprints and the snapshots that re-check them.

Importing this package wires its parts together: :mod:`~nbcache.keys.digest` is the registry
of value encodings; :mod:`~nbcache.keys.digest_stdlib` and :mod:`~nbcache.keys.fingerprint`
register their encodings into it (functions and code objects digest by code fingerprint), so
the digest core never imports what it dispatches to.
"""

from nbcache.keys import digest, digest_stdlib, fingerprint

__all__ = ["digest", "digest_stdlib", "fingerprint"]

"""Hidden inputs: what a computation reads besides its arguments, recorded while it runs.

Files it opens for reading, glob patterns it declares, environment variables it reads and
the global random generators it draws from are recorded during a miss
(:mod:`~nbcache.inputs.recording`, routed by :mod:`~nbcache.inputs.instrumentation`), kept
in the entry's signed metadata and checked before a hit is used
(:mod:`~nbcache.inputs.hidden`). Both front doors use this layer; it knows nothing of
entries or stores.
"""

"""Keys: canonical value digests, code fingerprints and the snapshots that re-check them."""

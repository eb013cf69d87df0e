"""Entries: what a cache stores: the serialized value in a signed, versioned envelope."""

"""Byte stores: where cache entries live (in process, memcached) and the layers that wrap them."""

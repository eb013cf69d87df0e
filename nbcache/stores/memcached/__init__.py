"""The memcached byte store: server pools, circuit breakers, the wire protocol and keys."""

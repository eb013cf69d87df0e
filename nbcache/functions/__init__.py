"""@cached_result: keys of calls, stampede protection and explanations of misses."""

"""State shared beyond one call: the store protocol and its backends."""

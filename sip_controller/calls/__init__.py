"""One call's life: the registry, the supervisor (I/O), the pure call machine and its features, report, pricing."""

"""The process and its HTTP face: app, serving, webhook intake, admission, routing, admin API, console,
metrics, logging."""

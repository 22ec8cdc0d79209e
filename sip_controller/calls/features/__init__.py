"""Parts of a call composed by the machine: transfer, watchdogs, hold mode, keypad. Each is a small class with
its own state; what it needs of the call goes through ``port.CallPort``, never through the machine itself, and
no feature imports another."""

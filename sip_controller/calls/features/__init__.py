"""Parts of a call composed by the machine: transfer, watchdogs, hold mode, keypad, live control. Each is a small
class with its own state; what it needs of the call goes through ``port.CallPort`` (``control.ControlPort`` for
live control), never through the machine itself, and no feature imports another."""

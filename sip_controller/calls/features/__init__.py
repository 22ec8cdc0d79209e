"""Parts of a call composed by the machine: transfer, watchdogs, hold mode, keypad."""

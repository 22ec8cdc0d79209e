"""An example operator tool, referenced from config/sipctl.example.yaml as ``sip_controller.agent.example_tools:…``.

A Python tool is an async function ``(arguments: dict, call: ToolCall) -> str | JSON-able``; sip-controller checks
the model's arguments against the tool's ``parameters`` schema first and applies the tool's timeout.
"""

from __future__ import annotations

from typing import Any

from sip_controller.agent.operator_tools import ToolCall

_HOURS = {
    "monday": "9:00-17:00",
    "tuesday": "9:00-17:00",
    "wednesday": "9:00-17:00",
    "thursday": "9:00-19:00",
    "friday": "9:00-17:00",
    "saturday": "closed",
    "sunday": "closed",
}


async def opening_hours(arguments: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    day = str(arguments.get("day", "")).strip().lower()
    if day not in _HOURS:
        return {"error": f"unknown day {day!r}; use a weekday name"}
    return {"day": day, "hours": _HOURS[day]}

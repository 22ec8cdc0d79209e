"""``python -m sip_controller``: the same as ``sipctl``."""

from __future__ import annotations

from sip_controller.cli import main

raise SystemExit(main())

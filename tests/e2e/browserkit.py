"""What the browser tests of the console share: a headless Chromium (Debian's ``chromium`` + ``chromium-driver``)
is there, or the test skips with the reason locally and fails with it under ``CI`` (``.ci/run`` installs the
packages before ``make test``). The driver itself is :func:`sip_controller.simulator.screenshots.chrome`."""

from __future__ import annotations

import os

import pytest

from sip_controller.simulator import screenshots


def require_browser() -> None:
    missing = screenshots.browser_missing()
    if not missing:
        return
    reason = f"headless Chromium not installed ({', '.join(missing)} missing): apt-get install chromium chromium-driver"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)

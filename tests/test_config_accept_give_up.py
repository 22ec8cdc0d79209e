"""``limits.accept_give_up_status``: the SIP status of a call whose accept was given up (480 or 503)."""

from __future__ import annotations

import pytest

from sip_controller.config import ConfigError, Limits, load_settings


def test_the_default_is_503_and_480_may_be_chosen() -> None:
    assert Limits().accept_give_up_status == 503
    assert Limits.model_validate({"accept_give_up_status": 480}).accept_give_up_status == 480


def test_the_environment_sets_it_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIPCTL_LIMITS__ACCEPT_GIVE_UP_STATUS", "480")
    assert load_settings().limits.accept_give_up_status == 480


@pytest.mark.parametrize("value", ["486", "603", "busy"])
def test_other_statuses_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SIPCTL_LIMITS__ACCEPT_GIVE_UP_STATUS", value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "SIPCTL_LIMITS__ACCEPT_GIVE_UP_STATUS" in str(info.value)
    assert "480 or 503" in str(info.value)

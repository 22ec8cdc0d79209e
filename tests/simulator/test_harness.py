"""Tests for sip_controller.simulator.harness: how a profile's policy durations are compressed with time."""

from __future__ import annotations

from sip_controller.agent.profile import AgentProfile
from sip_controller.simulator.harness import scale_profile


def test_policy_durations_are_compressed_by_the_factor() -> None:
    profile = AgentProfile()
    scaled = scale_profile(profile, 0.1)
    assert scaled.watchdogs.max_duration_s == profile.watchdogs.max_duration_s * 0.1
    assert scaled.hold.max_hold_s == profile.hold.max_hold_s * 0.1
    assert scaled.goodbye_timeout_s == max(profile.goodbye_timeout_s * 0.1, 1.0)


def test_the_goodbye_fallback_is_never_compressed_below_a_second_nor_raised() -> None:
    assert scale_profile(AgentProfile(goodbye_timeout_s=5.0), 0.01).goodbye_timeout_s == 1.0
    assert scale_profile(AgentProfile(goodbye_timeout_s=8.0), 0.5).goodbye_timeout_s == 4.0
    assert scale_profile(AgentProfile(goodbye_timeout_s=0.5), 0.01).goodbye_timeout_s == 0.5

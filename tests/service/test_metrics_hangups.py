"""/metrics for hangups OpenAI has not confirmed (#13): a gauge of this process's calls hanging up, a counter of
hangup retries."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from sip_controller.calls.report import CallRecord
from sip_controller.service.metrics import Metrics


def sample(metrics: Metrics, name: str) -> float:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name:
                return float(s.value)
    raise AssertionError(f"no sample {name}")


def test_calls_hanging_up_unconfirmed_and_hangup_retries_are_counted() -> None:
    metrics = Metrics()
    now = datetime.now(UTC)
    records = [CallRecord(call_id=f"rtc_{i}", profile="default", received_at=now) for i in range(3)]
    records[0].state = records[2].state = "hanging_up"
    records[1].state = "attached"
    metrics.watch_rate_limits(lambda: records)
    assert sample(metrics, "sipctl_calls_hanging_up") == 2
    metrics.hangup_retry("rtc_0")
    metrics.hangup_retry("rtc_2")
    assert sample(metrics, "sipctl_hangup_retries_total") == 2
    records[0].state = "ended"
    assert sample(metrics, "sipctl_calls_hanging_up") == 1

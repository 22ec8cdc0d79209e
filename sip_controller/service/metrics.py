"""Prometheus metrics: low-cardinality names with the ``sipctl_`` prefix and base units.

Never a call id or a phone number as a label: labels are outcomes, reasons, operations, profiles and tool names
(all bounded by the config). Each app owns its own ``CollectorRegistry`` (no global state, several apps per
process in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sip_controller import __version__
from sip_controller.calls.report import CallRecord
from sip_controller.state.records import OutboxStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CALL_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


def status_class(status: int) -> str:
    return "error" if status == 0 else f"{status // 100}xx"


class _DeliveryCollector(Collector):
    """Reads the report notifier's counters at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "sipctl_event_webhook_deliveries", "Call report deliveries by outcome", labels=["outcome"]
        )
        for outcome, value in self._stats().items():
            family.add_metric([outcome], value)
        yield family


class _OutboxCollector(Collector):
    """The report outbox (cluster-wide: read from the store just before each scrape) and this process's
    delivery problems."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterable[Metric]:
        stats = self._m.outbox
        counts = self._m.delivery_counts()
        if stats is not None:
            yield GaugeMetricFamily(
                "sipctl_report_outbox_pending", "Reports (deliveries and call-log lines) not yet delivered",
                value=stats.pending,
            )  # fmt: skip
            yield GaugeMetricFamily(
                "sipctl_report_outbox_oldest_age_seconds",
                "Age of the oldest undelivered report (0 when none waits)",
                value=stats.oldest_age_s or 0.0,
            )
            yield GaugeMetricFamily(
                "sipctl_report_outbox_given_up", "Reports given up (never delivered), kept in the outbox",
                value=stats.gave_up,
            )  # fmt: skip
        failures = CounterMetricFamily(
            "sipctl_report_delivery_failures", "Failed report delivery attempts (retried with backoff)"
        )
        failures.add_metric([], counts.get("failed", 0))
        yield failures
        writes = CounterMetricFamily(
            "sipctl_report_jsonl_write_failures", "Call-log lines whose write failed (retried with backoff)"
        )
        writes.add_metric([], counts.get("write_failed", 0))
        yield writes


#: the outcome labels of ``sipctl_event_webhook_deliveries``
_DELIVERY_OUTCOMES = ("delivered", "failed", "dropped", "gave_up")

#: the rate limits OpenAI reports (``rate_limits.updated``): the only values the ``name`` label takes
RATE_LIMIT_NAMES = ("requests", "tokens")


class _RateLimitCollector(Collector):
    """At scrape time, the lowest remaining value of each of OpenAI's rate limits that the live calls last saw:
    how close the project is to being throttled. Labelled by the limit's name only."""

    def __init__(self, records: Callable[[], Iterable[CallRecord]]) -> None:
        self._records = records

    def collect(self) -> Iterable[Metric]:
        lowest: dict[str, int] = {}
        for record in self._records():
            for name, state in record.rate_limits.items():
                if name in RATE_LIMIT_NAMES and state.remaining is not None:
                    lowest[name] = min(lowest.get(name, state.remaining), state.remaining)
        family = GaugeMetricFamily(
            "sipctl_openai_rate_limit_remaining",
            "Lowest remaining value of each OpenAI rate limit across live calls (their latest rate_limits.updated)",
            labels=["name"],
        )
        for name in RATE_LIMIT_NAMES:
            if name in lowest:
                family.add_metric([name], lowest[name])
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhooks = Counter(
            "sipctl_webhooks_received", "Webhook deliveries by outcome", ["outcome"], registry=r
        )
        self.calls_ended = Counter("sipctl_calls_ended", "Calls ended, by ended_reason", ["ended_reason"], registry=r)
        self.call_duration = Histogram(
            "sipctl_call_duration_seconds", "Call duration from webhook to end", buckets=CALL_BUCKETS, registry=r
        )
        self.ring_to_answer = Histogram(
            "sipctl_ring_to_answer_seconds", "Webhook received to call accepted", buckets=LATENCY_BUCKETS, registry=r
        )
        self.openai_requests = Histogram(
            "sipctl_openai_request_duration_seconds",
            "OpenAI REST requests by operation and status class",
            ["operation", "status_class"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sideband = Counter(
            "sipctl_sideband_events", "Sideband disconnects and reconnects", ["event"], registry=r
        )
        self.tool_calls = Counter(
            "sipctl_tool_calls", "Tool calls by tool and outcome", ["tool", "outcome"], registry=r
        )
        self.tool_duration = Histogram(
            "sipctl_tool_duration_seconds", "Operator tool latency", ["tool"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.cost = Counter("sipctl_call_cost_usd", "Model and transcription cost of ended calls", ["profile"],
                            registry=r)
        self.calls_active = Gauge("sipctl_calls_active", "Calls being supervised now", registry=r)
        self.hanging_up = Gauge(
            "sipctl_calls_hanging_up", "Calls of this process whose hangup OpenAI has not confirmed yet", registry=r
        )
        self.hanging_up.set_function(
            lambda: float(sum(1 for rec in self._live_records() if rec.state == "hanging_up"))
        )
        self.hangup_retries = Counter(
            "sipctl_hangup_retries", "Hangups tried again after OpenAI did not confirm one (5xx, timeout)", registry=r
        )
        self.build = Gauge("sipctl_build_info", "Build information", ["version"], registry=r)
        self.build.labels(version=__version__).set(1)
        self._live_records: Callable[[], Iterable[CallRecord]] = tuple
        #: the outbox as last read from the store (``set_outbox``, before each scrape); None: not read yet
        self.outbox: OutboxStats | None = None
        self.delivery_counts: Callable[[], dict[str, int]] = dict
        r.register(_OutboxCollector(self))
        r.register(_RateLimitCollector(lambda: self._live_records()))
        self._webhook_children: dict[str, Counter] = {}
        self._request_children: dict[tuple[str, str], Histogram] = {}

    def watch_live_calls(self, count: Callable[[], int]) -> None:
        self.calls_active.set_function(lambda: float(count()))

    def watch_rate_limits(self, live_records: Callable[[], Iterable[CallRecord]]) -> None:
        """``sipctl_openai_rate_limit_remaining`` is read from these records (the live calls') at scrape time."""
        self._live_records = live_records

    def watch_deliveries(self, stats: Callable[[], dict[str, int]]) -> None:
        self.delivery_counts = stats
        self.registry.register(_DeliveryCollector(lambda: {k: stats().get(k, 0) for k in _DELIVERY_OUTCOMES}))

    def set_outbox(self, stats: OutboxStats | None) -> None:
        self.outbox = stats

    def webhook(self, outcome: str) -> None:
        child = self._webhook_children.get(outcome)
        if child is None:  # labels() costs more than the increment; the outcomes are a handful of constants
            child = self._webhook_children[outcome] = self.webhooks.labels(outcome=outcome)
        child.inc()

    def openai_request(self, operation: str, status: int, seconds: float) -> None:
        key = (operation, status_class(status))
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.openai_requests.labels(operation=key[0], status_class=key[1])
        child.observe(seconds)

    def hangup_retry(self, _call_id: str = "") -> None:
        """A hangup is tried again (``CallOptions.on_hanging_up``, the hangup janitor's ``on_retry``)."""
        self.hangup_retries.inc()

    def sideband_event(self, event: str) -> None:
        self.sideband.labels(event=event).inc()

    def call_ended(self, record: CallRecord) -> None:
        self.calls_ended.labels(ended_reason=record.ended_reason or "unknown").inc()
        if record.duration_s is not None:
            self.call_duration.observe(record.duration_s)
        if record.accepted_s is not None:
            self.ring_to_answer.observe(record.accepted_s)
        for tool in record.tool_calls:
            # a name the model made up is not a label value: cardinality stays bounded by the config
            name = "unknown" if tool.outcome == "unknown_tool" or not tool.name else tool.name
            self.tool_calls.labels(tool=name, outcome=tool.outcome).inc()
            if tool.duration_s is not None:
                self.tool_duration.labels(tool=name).observe(tool.duration_s)
        if record.cost_usd:
            self.cost.labels(profile=record.profile).inc(record.cost_usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)

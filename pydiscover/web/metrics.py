"""``/metrics``: the cluster as the monitor hears it, in Prometheus' text format.

A collector read at scrape time (nothing is counted twice, nothing goes stale), in a
registry of its own: the process's default metrics are not mixed in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .view import ClusterView

__all__ = ["CONTENT_TYPE_LATEST", "ClusterCollector", "metrics_text"]


class ClusterCollector(Collector):
    """Gauges of nodes and masters, counters of hellos, packets, channel messages and drops."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view

    def collect(self) -> Iterator[Any]:
        snap = self.view.nodes_snapshot()
        stats = snap["stats"]
        yield GaugeMetricFamily("pydiscover_nodes", "Nodes the monitor hears now", value=snap["totals"]["nodes"])
        yield GaugeMetricFamily("pydiscover_masters", "Masters among them", value=snap["totals"]["masters"])
        yield CounterMetricFamily("pydiscover_hellos", "Hellos received", value=self.view.hellos_total)
        rate = GaugeMetricFamily("pydiscover_hello_rate", "Hellos per second from each node (last 10 s)",
                                 labels=["id", "hostname"])
        master = GaugeMetricFamily("pydiscover_node_master", "1 if the node is a master", labels=["id", "hostname"])
        total = 0.0
        for record in snap["nodes"]:
            labels = [record["id"], record["hostname"]]
            hellos = self.view.hello_rate(record["id"])
            total += hellos
            rate.add_metric(labels, hellos)
            master.add_metric(labels, 1.0 if record["is_master"] else 0.0)
        yield GaugeMetricFamily("pydiscover_hellos_per_second", "Hellos per second from all nodes (last 10 s)",
                                value=total)
        yield rate
        yield master
        yield CounterMetricFamily("pydiscover_packets_in", "Datagrams received", value=stats["packets_in"])
        yield CounterMetricFamily("pydiscover_channel_messages", "Channel messages heard",
                                  value=stats["channel_messages"])
        dropped = CounterMetricFamily("pydiscover_dropped", "Datagrams dropped, by reason", labels=["reason"])
        for reason, count in sorted(stats["dropped"].items()):
            dropped.add_metric([reason], count)
        yield dropped


def metrics_text(view: ClusterView) -> bytes:
    """One scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(view))
    return generate_latest(registry)

"""The monitor's web view (``python -m pydiscover.monitor --http PORT``; extra ``web``).

A page that shows the cluster live, ``/api/nodes`` (JSON), ``/api/events`` (a live
stream) and ``/metrics`` (Prometheus).  See docs/monitor.rst.
"""

from __future__ import annotations

INSTALL_HINT = "the web view needs the 'web' extra: pip install 'pydiscover-lan[web]'"

try:
    from .server import WebMonitor
    from .view import ClusterView
except ImportError as exc:  # aiohttp or prometheus_client missing: say how to get them
    if exc.name not in ("aiohttp", "prometheus_client") and not str(exc.name or "").startswith(
        ("aiohttp.", "prometheus_client.")
    ):
        raise
    raise ImportError(f"{INSTALL_HINT} ({exc})", name=exc.name) from exc

__all__ = ["INSTALL_HINT", "ClusterView", "WebMonitor"]

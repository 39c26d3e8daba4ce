"""etcd: a registry for networks where broadcast does not reach (``registry="etcd://..."``).

Needs the ``etcd`` extra (``pip install pydiscover-lan[etcd]``, the aetcd client); nothing
here is imported unless a registry URL is given.
"""

from __future__ import annotations

from .registry import MIN_LEASE_TTL, EtcdRegistry, lease_ttl
from .url import EtcdConfig, parse_etcd_url

__all__ = ["MIN_LEASE_TTL", "EtcdConfig", "EtcdRegistry", "lease_ttl", "parse_etcd_url"]

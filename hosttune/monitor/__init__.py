"""Monitoring: one status snapshot built from independent collectors, and a Prometheus
exporter over the same collectors. Nothing here prints."""

from hosttune.monitor.snapshot import (
    AuditSummary,
    Collector,
    Snapshot,
    Unavailable,
    collect,
    collect_audit,
)

__all__ = ["AuditSummary", "Collector", "Snapshot", "Unavailable", "collect", "collect_audit"]

"""Packaged systemd units of the monitor (hosttune-exporter.service)."""

"""Fleet integration: exports for the engines operators already run (tuned).

The Ansible collection and the Kubernetes manifests live outside the package, in ``fleet/``:
they drive the hosttune CLI on the target and need nothing from here."""

from hosttune.fleet.tuned import TunedExport, Unexpressed, export_tuned

__all__ = ["TunedExport", "Unexpressed", "export_tuned"]

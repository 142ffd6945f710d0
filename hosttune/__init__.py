"""hosttune: make Linux hosts fast and predictable for AI inference, and prove it."""

__version__ = "0.1.0"

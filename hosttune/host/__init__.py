"""The one door to the machine."""

from hosttune.host.core import FileState, Host
from hosttune.host.facts import HostFacts
from hosttune.host.runner import CommandResult, Runner

__all__ = ["CommandResult", "FileState", "Host", "HostFacts", "Runner"]

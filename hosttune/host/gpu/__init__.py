"""NVIDIA GPUs: the NVML gateway (the one place that talks to the driver), its faithful fake
for tests, hosttune's runtime markers for settings NVML cannot read back, and the status
snapshot behind ``hosttune status gpu``."""

from hosttune.host.gpu.nvml import (
    ComputeMode,
    GpuInfo,
    Nvml,
    NvmlState,
    NvmlUnsupportedError,
    Reading,
    make_gateway,
)

__all__ = ["ComputeMode", "GpuInfo", "Nvml", "NvmlState", "NvmlUnsupportedError", "Reading",
           "make_gateway"]

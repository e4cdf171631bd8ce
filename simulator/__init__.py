"""A deterministic simulator of child processes, memory devices and clocks around the router core."""

from .engine import Simulation, SimResult
from .faults import FAULT_PRESETS, Faults
from .workloads import WORKLOADS, Arrival, Workload, make_workload

__all__ = ["Simulation", "SimResult", "FAULT_PRESETS", "Faults", "WORKLOADS", "Arrival",
           "Workload", "make_workload"]

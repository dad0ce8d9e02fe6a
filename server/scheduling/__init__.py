"""Server-side scheduling of ready calls: ordering (policy), admission, placement. Pure."""

from server.scheduling.placement import EngineLoad, choose_engine
from server.scheduling.policy import (
    LATENCY_PRIORITY,
    NORMAL_PRIORITY,
    THROUGHPUT_PRIORITY,
    AppPolicy,
    FifoPolicy,
    OrderingPolicy,
    call_priority,
)
from server.scheduling.scheduler import Admission, CallScheduler, WorkItem

__all__ = [
    "LATENCY_PRIORITY",
    "NORMAL_PRIORITY",
    "THROUGHPUT_PRIORITY",
    "Admission",
    "AppPolicy",
    "CallScheduler",
    "EngineLoad",
    "FifoPolicy",
    "OrderingPolicy",
    "WorkItem",
    "call_priority",
    "choose_engine",
]

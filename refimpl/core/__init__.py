"""The router's pure core: protocol, model lifecycle, scheduling. No I/O, no clock, no randomness."""

from .commands import (Command, Forward, Kill, Listed, Log, ModelView, Publish, RemoveFiles,
                       Reply, SendExit, Spawn)
from .config import DEFAULT_POLICY, POLICIES, Card, ModelSpec, RouterConfig
from .events import (ChildExited, ChildOutput, ChildStarted, ClientGone, DownloadAsked, Event,
                     ListAsked, LoadAsked, RemoveAsked, RequestArrived, ResponseEnded, RouterStarted,
                     TimerFired, UnloadAsked)
from .lifecycle import IllegalTransition, Status
from .router import RouterCore

__all__ = [
    "Command", "Forward", "Kill", "Listed", "Log", "ModelView", "Publish", "RemoveFiles", "Reply",
    "SendExit", "Spawn", "DEFAULT_POLICY", "POLICIES", "Card", "ModelSpec", "RouterConfig",
    "ChildExited", "ChildOutput", "ChildStarted", "ClientGone", "Event", "ListAsked", "LoadAsked",
    "RequestArrived", "ResponseEnded", "RouterStarted", "TimerFired", "UnloadAsked", "DownloadAsked", "RemoveAsked",
    "IllegalTransition", "Status", "RouterCore",
]

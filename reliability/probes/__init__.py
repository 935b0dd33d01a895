"""Security probes against a running API: each returns `Check`s, one per request or case.

The routes come from the server's own OpenAPI document, so a route added later is probed
without a change here. Every probe is bounded in count and time and talks to loopback only.
"""

from reliability.probes.auth import auth_checks, log_hits
from reliability.probes.injection import INJECTIONS, injection_checks
from reliability.probes.target import Check, Target
from reliability.probes.wire import body_checks, header_checks, slowloris_checks

__all__ = [
    "INJECTIONS",
    "Check",
    "Target",
    "auth_checks",
    "body_checks",
    "header_checks",
    "injection_checks",
    "log_hits",
    "slowloris_checks",
]

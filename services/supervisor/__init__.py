"""The supervisor (``shoal up``): binds ctl (ROUTER: ps, signal, restart, stop); starts,
watches, restarts with backoff and stops every process of a local cluster. Its ctl is a
Curve server: ps for a reader's key, signal, restart and stop for an operator's. It trusts
its children's exit codes and nothing else they print (their output is passed through, line by
line, bounded).
"""

from .supervisor import ProcessSpec, Supervisor, run_supervisor, supervisor_request

__all__ = ["ProcessSpec", "Supervisor", "run_supervisor", "supervisor_request"]

"""How PyTorch's CPU threads wait for each other, set before torch starts its thread pool.

At every parallel step, the threads that finish first spin on the CPU waiting for the others.
On an idle machine that saves a little latency; on a busy one (a browser, another notebook's
kernel), a thread whose core was taken by another program keeps every sibling spinning, and
training slows several times over. libgomp (the OpenMP runtime in PyTorch's CPU wheels) reads
its settings from the environment once, when torch is imported, so they are set here, in the
package's __init__, before any course module imports torch. A user's own OMP_WAIT_POLICY or
GOMP_SPINCOUNT always wins, and COURSE_THREAD_POLICY=off leaves libgomp's defaults alone.
The chosen value is measured in benchmarks/contention.py (results in benchmarks/README.md).
During training, course_lib.runtime.cpu_share also lowers the thread count to the cores other programs
leave free, which no wait setting can do.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

POLICY_ENV = "COURSE_THREAD_POLICY"
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
DEFAULTS = {"GOMP_SPINCOUNT": "3000"}  # measured: see benchmarks/README.md, "CPU contention"


def apply_thread_policy(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set the course's OpenMP wait settings unless the user chose their own; return what was set."""
    if environ.get(POLICY_ENV, "").strip().lower() == "off":
        return {}
    if any(name in environ for name in USER_SETTINGS):
        return {}
    environ.update(DEFAULTS)
    return dict(DEFAULTS)

"""l2obench's on/off environment variables, read one way (imports nothing, so the
command can read them before anything heavy loads).

:data:`RESULT_SWITCHES` lists those that change results without changing any suite
setting; a switch set to other than its default is part of every cell's key
(:func:`result_switches`), so cells computed one way are never reused the other."""
from __future__ import annotations

import os

#: The switches that change results (if only in the last bits), each on by default,
#: with what they decide.  A plugin whose results depend on an environment variable
#: reads it through :func:`env_switch` and is listed here.
RESULT_SWITCHES: dict[str, str] = {
    "L2OBENCH_NATIVE": "kernel mode (the LSTM optimizers' fused CPU kernel, or torch ops)",
}


def env_switch(name: str) -> bool:
    """An ``L2OBENCH_*`` on/off variable: on unless set to 0, false, no or off."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


def result_switches() -> dict[str, str]:
    """The :data:`RESULT_SWITCHES` turned off, as ``{name: "off"}`` (empty by default, so
    that cell keys do not change when nothing is switched)."""
    return {name: "off" for name in RESULT_SWITCHES if not env_switch(name)}

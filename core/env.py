"""l2obench's on/off environment variables, read one way (imports nothing, so the
command can read them before anything heavy loads)."""
from __future__ import annotations

import os


def env_switch(name: str) -> bool:
    """An ``L2OBENCH_*`` on/off variable: on unless set to 0, false, no or off."""
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")

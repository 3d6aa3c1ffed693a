"""Connection strings for clients going through a proxy or pooler (one address, no multi-host)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote


def proxy_dsn(host: str, port: int, user: str, password: str, dbname: str = "postgres",
              ssl: Mapping[str, str] | None = None) -> str:
    """`ssl`: sslmode and sslrootcert (report.ssl_options); a proxy that passes TCP through
    leaves TLS to PostgreSQL, so verify-full still checks the server's certificate."""
    auth = quote(user, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    h = f"[{host}]" if ":" in host else host
    extra = "".join(f"&{k}={quote(v, safe='/')}" for k, v in (ssl or {}).items())
    return f"postgresql://{auth}@{h}:{port}/{quote(dbname, safe='')}?connect_timeout=2{extra}"

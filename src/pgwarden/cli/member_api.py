"""`pgwarden ctl`'s calls to a member's REST API (restart, reinit): its address from the store, the
credentials from the node file's `restapi.authentication` (the cluster's members share them, as
with Patroni), and every failure as one line, a 401 naming the file and key to fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import urllib3

from pgwarden.api.auth import basic_header
from pgwarden.cli.output import CliError
from pgwarden.config.schema import NodeConfig
from pgwarden.core.model import ClusterView
from pgwarden.tls.contexts import TlsPaths
from pgwarden.tls.http import api_pool


def member_api_url(view: ClusterView, node: str, cluster: str) -> str:
    m = view.members.get(node)
    if m is None:
        known = ", ".join(sorted(view.members)) or "none published"
        raise CliError(f"no member named '{node}' in cluster {cluster} (members: {known})")
    if not m.api_url:
        raise CliError(f"member {node} publishes no REST API address")
    return m.api_url.rstrip("/")


def api_headers(cfg: NodeConfig, config_path: str | Path) -> dict[str, str]:
    """The Authorization header from `restapi.authentication`; none when the file has none."""
    auth = cfg.restapi.authentication
    if auth is None:
        return {}
    try:
        return {"Authorization": basic_header(auth.username, auth.secret())}
    except ValueError as e:
        raise CliError(f"{config_path}: restapi.authentication: {e}") from None


def _unauthorized(node: str, url: str, config_path: str | Path, sent: bool) -> CliError:
    if sent:
        return CliError(f"{node}'s REST API ({url}) refused the credentials in restapi.authentication of "
                        f"{config_path} (HTTP 401): set them to the cluster's REST API username and password")
    return CliError(f"{node}'s REST API ({url}) requires credentials (HTTP 401): set restapi.authentication "
                    f"(username, and password or password_file) in {config_path}")


def post_action(url: str, node: str, headers: dict[str, str], config_path: str | Path,
                timeout: float = 120.0, tls: TlsPaths | None = None) -> dict[str, Any]:
    """POST to a member with `headers` (api_headers) and, for https, `tls` (the node file's
    restapi.tls: its CA and client certificate); a non-2xx answer becomes a CliError carrying
    the member's message, a 401 one saying which file and key to fix."""
    http = api_pool(tls, retries=False, timeout=urllib3.Timeout(connect=3.0, read=timeout))
    try:
        resp = http.request("POST", url, body=b"{}", headers={"Content-Type": "application/json", **headers})
    except urllib3.exceptions.HTTPError as e:
        raise CliError(f"cannot reach {node}'s REST API at {url}: {e}") from None
    if resp.status == 401:
        raise _unauthorized(node, url, config_path, "Authorization" in headers)
    text = resp.data.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = {"message": text}
    if not isinstance(body, dict):
        body = {"message": text}
    if resp.status >= 300:
        msg = body.get("message") or body.get("error") or text or f"HTTP {resp.status}"
        raise CliError(f"{node}: {msg} (HTTP {resp.status})")
    return body

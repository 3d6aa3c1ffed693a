"""`pgwarden ctl explain` and `pgwarden ctl replay`: why the agents did what they did.

explain: every member's decision log (GET /decisions, with the node file's REST API credentials)
merged into one timeline, each decision with the rule that chose it and what the node saw.
replay: the pure core run again over the recorded observations with other settings (`--set
ttl=10`), showing where it would have decided otherwise: a what-if for tuning.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import urllib3

from pgwarden.api.telemetry import action_json, decode_observation
from pgwarden.cli.member_api import api_headers
from pgwarden.cli.output import CliError, print_json
from pgwarden.config.errors import ConfigError
from pgwarden.config.load import apply_settings
from pgwarden.core.decide import decide
from pgwarden.core.rules import rule_for
from pgwarden.tls.http import api_pool

if TYPE_CHECKING:
    from pgwarden.cli.ctl_context import Ctx

FETCH_TIMEOUT = 5.0


def register(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = cmds.add_parser("explain", help="why the members did what they did: one timeline of decisions")
    p.add_argument("--member", action="append", metavar="NAME", help="only this member (repeatable)")
    p.add_argument("--last", type=int, default=50, metavar="N", help="the last N decisions (default 50)")
    p.add_argument("--since", metavar="TIME", help="only since TIME: ISO 8601, HH:MM[:SS] today, or -5m")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="json: the records with their full observations (input for `ctl replay`)")
    p.set_defaults(ctl_func=cmd_explain)
    p = cmds.add_parser("replay", help="run the decision core again over recorded decisions with other "
                        "settings")
    p.add_argument("file", metavar="DECISIONS.json",
                   help="from `ctl explain --format json` or GET /decisions?full=1")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
                   help="a cluster setting to change for the replay (repeatable), e.g. ttl=10")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(ctl_func=cmd_replay)


# -- explain -------------------------------------------------------------------------------------


def parse_since(text: str | None, now: datetime) -> float | None:
    """Epoch seconds from ISO 8601, HH:MM[:SS] (today, local time) or -N[smh] (ago)."""
    if not text:
        return None
    t = text.strip()
    if t.startswith("-") and t[-1:] in ("s", "m", "h") and t[1:-1].replace(".", "", 1).isdigit():
        return now.timestamp() - float(t[1:-1]) * {"s": 1, "m": 60, "h": 3600}[t[-1]]
    try:
        if len(t) <= 8 and ":" in t:
            parts = [int(x) for x in t.split(":")]
            hms = [*parts, 0, 0][:3]
            return now.replace(hour=hms[0], minute=hms[1], second=hms[2], microsecond=0).timestamp()
        return datetime.fromisoformat(t).timestamp()
    except ValueError:
        raise CliError(f"--since {text!r}: expected ISO 8601 (2030-01-01T12:00:00+00:00), HH:MM[:SS] "
                       f"or an age like -5m") from None


def fetch(ctx: Ctx, members: list[str] | None, last: int, since: float | None) -> list[dict[str, Any]]:
    """Every (chosen) member's records, merged by time; an unreachable member is named on stderr."""
    view = ctx.snapshot()
    names = sorted(view.members)
    if members:
        unknown = sorted(set(members) - set(names))
        if unknown:
            raise CliError(f"no member named {', '.join(unknown)} in cluster {ctx.cfg.cluster} "
                           f"(members: {', '.join(names) or 'none published'})")
        names = [n for n in names if n in members]
    headers = api_headers(ctx.cfg, ctx.path)
    http = api_pool(ctx.cfg.restapi.client_tls(), retries=False, timeout=urllib3.Timeout(total=FETCH_TIMEOUT))
    query = f"?full=1&last={last}" + (f"&since={since}" if since is not None else "")
    records: list[dict[str, Any]] = []
    for name in names:
        url = view.members[name].api_url.rstrip("/") + "/decisions" + query
        try:
            resp = http.request("GET", url, headers=headers)
        except urllib3.exceptions.HTTPError as e:
            print(f"pgwarden: warning: cannot reach {name}'s REST API at {url}: {e}", file=sys.stderr)
            continue
        if resp.status == 401:
            raise CliError(f"{name}'s REST API refused GET /decisions (HTTP 401): set restapi.authentication "
                           f"in {ctx.path} to the cluster's REST API credentials")
        if resp.status != 200:
            print(f"pgwarden: warning: {name}: GET /decisions answered HTTP {resp.status}", file=sys.stderr)
            continue
        records.extend(json.loads(resp.data)["decisions"])
    records.sort(key=lambda r: (r["at"], r["node"]))
    return records[-last:] if last else records


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-5]


def describe(r: dict[str, Any]) -> str:
    """Two lines a person can read: what the node decided and why, then what it saw."""
    s = r["summary"]
    acts = ", ".join(a["kind"] for a in r["actions"])
    when = _clock(r["at"]) + (f"-{_clock(r['last_at'])} (x{r['repeats']})" if r["repeats"] > 1 else "")
    head = f"{when} {r['node']}: {r['message']}" + (f" -> {acts}" if acts else "") + f"  [{r['rule']}]"
    pg = s["postgres"]
    seen = [f"leader {s['leader'] or 'none'}" if s["store_ok"] else "store unreachable"]
    if s["lease_held"]:
        seen.append(f"our lease {s['lease_left']:.1f}s left")
    seen.append(f"our PostgreSQL {pg['role']} tl {pg['timeline']} at {pg['lsn']}")
    peers = [f"{n} {p['received_lsn'] or p['lsn'] or '?'}" + ("" if p["reachable"] else " (unreachable)")
             for n, p in s["peers"].items()]
    if peers:
        seen.append("peers " + ", ".join(peers))
    if s["sync"] is not None:
        seen.append("sync set {" + ", ".join(s["sync"]) + "}")
    if s["failover"]:
        f = s["failover"]
        seen.append(f"{f['kind']} requested {f['leader'] or '?'} -> {f['candidate'] or 'any'}")
    return head + "\n    saw: " + "; ".join(seen)


def cmd_explain(args: argparse.Namespace, ctx: Ctx) -> int:
    if args.last < 1:
        raise CliError("--last must be at least 1")
    since = parse_since(args.since, datetime.now().astimezone())
    records = fetch(ctx, args.member, min(args.last, 1000), since)
    if args.format == "json":
        print_json({"cluster": ctx.cfg.cluster, "decisions": records})
        return 0
    if not records:
        print("no decisions recorded")
    for r in records:
        print(describe(r))
    return 0


# -- replay --------------------------------------------------------------------------------------


def load_records(path: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise CliError(f"{path} is not JSON: {e}") from None
    records = data.get("decisions") if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise CliError(f"{path}: expected {{\"decisions\": [...]}} from `pgwarden ctl explain --format json`")
    usable = [r for r in records if isinstance(r, dict) and "observation" in r]
    if records and not usable:
        raise CliError(f"{path} holds no observations: write it with `pgwarden ctl explain --format json` "
                       f"(or GET /decisions?full=1)")
    return usable


def replay(records: list[dict[str, Any]], assignments: list[str]) -> list[dict[str, Any]]:
    """For each recorded decision: what the core decides on the same observation under the changed
    settings, where that differs from what was recorded."""
    out: list[dict[str, Any]] = []
    for r in records:
        try:
            obs = decode_observation(r["observation"])
        except msgspec.ValidationError as e:
            raise CliError(f"a recorded observation of {r.get('node')} does not decode: {e}") from None
        try:
            settings = apply_settings(obs.settings, assignments)
        except ConfigError as e:
            raise CliError(str(e)) from None
        store = replace(obs.store, settings=settings) if obs.store is not None else None
        d = decide(replace(obs, settings=settings, store=store))
        actions = [action_json(a) for a in d.actions]
        if actions != r["actions"] or d.message != r["message"]:
            out.append({"node": r["node"], "at": r["at"], "recorded": {"message": r["message"],
                        "actions": r["actions"], "rule": r["rule"]},
                        "replayed": {"message": d.message, "actions": actions, "rule": rule_for(d)}})
    return out


def _kinds(actions: list[dict[str, Any]]) -> str:
    return ", ".join(a["kind"] for a in actions) or "nothing"


def cmd_replay(args: argparse.Namespace, ctx: Ctx) -> int:
    records = load_records(args.file)
    diffs = replay(records, args.assignments)
    if args.format == "json":
        print_json({"replayed": len(records), "settings": args.assignments, "differences": diffs})
        return 0
    what = " ".join(args.assignments) or "the recorded settings"
    for d in diffs:
        rec, new = d["recorded"], d["replayed"]
        print(f"{_clock(d['at'])} {d['node']}:")
        print(f"    recorded: {rec['message']} -> {_kinds(rec['actions'])}")
        print(f"    with {what}: {new['message']} -> {_kinds(new['actions'])}  [{new['rule']}]")
    print(f"{len(diffs)} of {len(records)} decisions differ with {what}")
    return 0

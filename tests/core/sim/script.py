"""Golden scenario scripts: failover stories a reader can follow without Python, in the style of
etcd raft's `testdata/*.txt` (datadriven). A script is a list of commands; after each one, a line
`----` and what the world logged while it ran (servers started, stopped, promoted; the fencer;
each agent's decision whenever its message changes), then a blank line. Lines starting with `#`
are comments. `PGWARDEN_REWRITE=1` rewrites the expected parts from what the code does now.

Commands (times in seconds):
    world n1 n2 n3 [mode=off|on|quorum] [strict] [count=N] [ttl=S] [loop_wait=S] [retry_timeout=S]
    run S                       advance the clock by S
    crash NODE S                the machine dies (PostgreSQL, agent, fencer); back after S
    freeze NODE S               the agent is stopped (SIGSTOP) for S; its fencer still runs
    cut-store NODE S            NODE cannot reach the store for S
    cut-peers NODE S            NODE cannot reach (or stream from) other nodes for S
    slow NODE S                 a streaming replica receives nothing for S
    switchover LEADER [CANDIDATE]
    failover CANDIDATE
    state                       each server's role, timeline, LSN and upstream; the store's
                                leader key and synchronous set
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pgwarden.core.model import FailoverRequest
from pgwarden.core.settings import ClusterSettings, SyncMode
from tests.core.sim.world import World


class Script:
    def __init__(self) -> None:
        self.world: World | None = None

    @property
    def w(self) -> World:
        if self.world is None:
            raise ValueError("the script must start with `world`")
        return self.world

    def run(self, command: str) -> list[str]:
        """Carry out one command; the lines it logged."""
        name, *args = command.split()
        handler: Callable[[list[str]], list[str] | None] | None = \
            getattr(self, "do_" + name.replace("-", "_"), None)
        if handler is None:
            raise ValueError(f"unknown command {name!r} (see tests/core/sim/script.py)")
        before = len(self.world.log) if self.world is not None else 0
        extra = handler(args) or []
        return self.w.log[before:] + extra

    def do_world(self, args: list[str]) -> None:
        names = tuple(a for a in args if "=" not in a and a != "strict")
        opts = dict(a.split("=", 1) for a in args if "=" in a)
        d = ClusterSettings()
        cluster = ClusterSettings(
            ttl=float(opts.pop("ttl", d.ttl)), loop_wait=float(opts.pop("loop_wait", d.loop_wait)),
            retry_timeout=float(opts.pop("retry_timeout", d.retry_timeout)),
            synchronous_mode=SyncMode(opts.pop("mode", "off")),
            synchronous_node_count=int(opts.pop("count", "1")),
            synchronous_mode_strict="strict" in args)
        if opts:
            raise ValueError(f"unknown world options {sorted(opts)}")
        self.world = World(names, cluster=cluster)

    def do_run(self, args: list[str]) -> None:
        self.w.run(float(args[0]))

    def do_crash(self, args: list[str]) -> None:
        self.w.crash(args[0], float(args[1]))

    def do_freeze(self, args: list[str]) -> None:
        self.w.nodes[args[0]].frozen_until = self.w.t + float(args[1])

    def do_cut_store(self, args: list[str]) -> None:
        self.w.nodes[args[0]].store_cut_until = self.w.t + float(args[1])

    def do_cut_peers(self, args: list[str]) -> None:
        self.w.nodes[args[0]].peers_cut_until = self.w.t + float(args[1])

    def do_slow(self, args: list[str]) -> None:
        self.w.nodes[args[0]].slow_until = self.w.t + float(args[1])

    def do_switchover(self, args: list[str]) -> None:
        self.w.request(FailoverRequest("switchover", args[0], args[1] if len(args) > 1 else None, None))

    def do_failover(self, args: list[str]) -> None:
        self.w.request(FailoverRequest("failover", None, args[0], None))

    def do_state(self, args: list[str]) -> list[str]:
        w = self.w
        out = []
        for n in w.nodes.values():
            pg = n.pg
            up = f" from {pg.upstream}" if pg.role == "replica" and pg.upstream else ""
            out.append(f"{n.name}: {pg.role} timeline {pg.timeline} lsn {pg.lsn}{up}")
        out.append(f"leader key: {w.leader_key() or '-'}")
        s = w.stored_sync()
        if s is not None:
            members = ", ".join(sorted(s.members)) or "-"
            out.append(f"synchronous set: {s.quorum} of {members} (by {s.leader})")
        return out


def play(path: Path, rewrite: bool) -> tuple[str, str]:
    """Run the script at `path`: (the file as it is, the file as the code writes it now). With
    `rewrite`, the second is written back."""
    text = path.read_text()
    lines = text.splitlines()
    out: list[str] = []
    script = Script()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            out.append(line)
            continue
        got = script.run(line)
        out += [line, "----", *got]
        if i < len(lines) and lines[i] == "----":  # skip the expected part
            i += 1
            while i < len(lines) and lines[i].strip():
                i += 1
        out.append("")
        if i < len(lines) and not lines[i].strip():
            i += 1
    now = "\n".join(out).rstrip("\n") + "\n"
    if rewrite and now != text:
        path.write_text(now)
    return text, now

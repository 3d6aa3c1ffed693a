"""`python -m pgwarden.gate.process NODE_FILE DIGEST`: a node's logical gate in a process of its
own, started and watched by the node's agent (gate/supervisor.py).

Why not a thread of the agent: a frozen or crashed agent took the gate with it, and with it every
subscription through it (a subscriber notices a silent connection only after its
wal_receiver_timeout); an agent restart dropped them all; and the agent's blocking libpq calls
hold the interpreter lock the gate's relays need. The gate needs nothing from the agent: it reads
the confirmed position from its own server.

DIGEST (of the node file) only names what the process was started from: an agent that finds a
gate started from another node file stops it and starts its own. Prints `listening` on standard
output once it listens, then nothing more; an error goes to standard error and the exit code is 2.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from pgwarden.config.errors import ConfigError
from pgwarden.config.load import load_node_config
from pgwarden.gate.start import gate_for
from pgwarden.logs import setup_logging
from pgwarden.postgres.server import local_conn_params, socket_dir_for

log = logging.getLogger("pgwarden.gate")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m pgwarden.gate.process NODE_FILE DIGEST", file=sys.stderr)
        return 2
    try:
        cfg = load_node_config(argv[0])
    except ConfigError as e:
        print(f"pgwarden gate: error: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg)
    # SIGTERM and SIGINT are taken with sigwait below: blocked here, before the gate's threads
    # (the clock's, the event loop's) start, so they inherit the mask and the main thread sleeps
    # without a wake-up until one comes.
    ends = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, ends)
    sock = socket_dir_for(cfg)
    gate = gate_for(cfg, lambda: local_conn_params(cfg, sock))
    if gate is None:
        print("pgwarden gate: error: the node file sets no postgresql.logical_gate_port", file=sys.stderr)
        return 2
    try:
        gate.start()
    except OSError as e:
        print(f"cannot listen on {gate.listen[0]}:{gate.listen[1]}: {e}", file=sys.stderr)
        return 2
    print("listening", flush=True)
    # Nothing more on standard output: the agent stops reading it (a pipe) once it has the line.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    signum = signal.sigwait(ends)
    log.info("logical gate on %s:%d: signal %d, stopping", *gate.listen, signum)
    gate.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

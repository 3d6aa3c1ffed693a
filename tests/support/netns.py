"""A private network of Linux network namespaces for fault-injection tests: one "switch"
namespace holding a bridge, one namespace per host joined to it by a veth pair, addresses in a
10.77.X.0/24 subnet that exists only inside these namespaces (plus, optionally, one veth into the
test's own namespace so the test process can act as a client host).

Faults, and why each mechanism (this kernel has no `sch_netem`, and neither `nft` nor
`iptables` is installed, so only iproute2 is relied on):

- `isolate(host)`: the switch-side veth goes down; every packet to or from the host is lost
  silently (the host keeps its address and its processes, like a pulled cable).
- `cut(a, b)` (mode "drop", the default): each side gets a permanent neighbour entry mapping the
  other's address to a MAC nobody owns. Frames still leave, the bridge floods them, no host accepts
  them: a silent loss between exactly those two hosts, with TCP left to time out, as in a real
  partition. Nothing else in either namespace changes.
- `cut(a, b, mode="reject")`: a `prohibit` route on each side; senders fail at once (EACCES),
  like a firewall REJECT.
- `degrade(host, delay_ms, loss_pct)`: `tc qdisc netem` on the host's interface when the kernel
  has netem (`netem_supported()`); callers skip such faults otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

BOGUS_MAC = "02:00:5e:77:00:01"  # locally administered; no interface here has it
IFACE = "eth0"  # every host's interface, inside its own namespace


class NetnsUnavailable(RuntimeError):
    """Why namespaces cannot be used here (for a clear pytest skip)."""


def unavailable_reason() -> str | None:
    """None when this process can build namespaced networks, else the reason it cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"pgw-probe-{uuid.uuid4().hex[:6]}"
    res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        return f"`ip netns add` fails here: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def _ip(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _free_subnet_octet() -> int:
    """A third octet X such that 10.77.X.0/24 is not routed in our namespace (so two runs at once,
    or another test's network, never share a subnet)."""
    used = _ip("-4", "route", "show").stdout + _ip("-4", "addr", "show").stdout
    choices = [x for x in range(1, 255) if f"10.77.{x}." not in used]
    if not choices:
        raise RuntimeError("every 10.77.X.0/24 subnet is in use")
    return random.SystemRandom().choice(choices)


@dataclass(frozen=True)
class Host:
    name: str
    netns: str | None  # None: the test's own namespace (the client host)
    address: str
    switch_port: str  # the veth end attached to the bridge, in the switch namespace


class Network:
    """`with Network() as net:` builds the switch; `add_host` adds hosts; leaving the block
    kills every process left in our namespaces and deletes everything created."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.octet = _free_subnet_octet()
        self.switch_ns = f"pgw-{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._root_links: list[str] = []
        self._cuts: set[tuple[str, str, str]] = set()
        self._next = 10

    # -- building ----------------------------------------------------------------------------
    def create(self) -> None:
        _ip("netns", "add", self.switch_ns)
        self._namespaces.append(self.switch_ns)
        _ip("-n", self.switch_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch_ns, "link", "set", "br0", "up")
        _ip("-n", self.switch_ns, "link", "set", "lo", "up")

    def add_host(self, name: str, last_octet: int | None = None) -> Host:
        """A namespace with one interface on the bridge and the address 10.77.X.<last_octet>."""
        octet = self._octet(last_octet)
        ns = f"pgw-{self.tag}-{name}"
        port = f"pw{self.tag}{octet}"
        addr = f"10.77.{self.octet}.{octet}"
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("link", "add", port, "type", "veth", "peer", "name", IFACE, "netns", ns)
        self._attach(port)
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", IFACE)
        _ip("-n", ns, "link", "set", IFACE, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        host = Host(name, ns, addr, port)
        self.hosts[name] = host
        return host

    def add_root_client(self, name: str = "client", last_octet: int = 250) -> Host:
        """A veth from the test's own namespace to the bridge, so the test process reaches the
        hosts directly. The only thing this network adds outside its own namespaces; removed in
        `destroy`."""
        octet = self._octet(last_octet)
        local = f"pw{self.tag}c"
        port = f"pw{self.tag}cb"
        addr = f"10.77.{self.octet}.{octet}"
        _ip("link", "add", local, "type", "veth", "peer", "name", port)
        self._root_links.append(local)
        self._attach(port)
        _ip("addr", "add", f"{addr}/24", "dev", local)
        _ip("link", "set", local, "up")
        host = Host(name, None, addr, port)
        self.hosts[name] = host
        return host

    def _octet(self, wanted: int | None) -> int:
        taken = {int(h.address.rsplit(".", 1)[1]) for h in self.hosts.values()}
        if wanted is None:
            while self._next in taken:
                self._next += 1
            wanted = self._next
        if wanted in taken or not 1 <= wanted <= 254:
            raise ValueError(f"address octet {wanted} is taken or invalid")
        return wanted

    def _attach(self, port: str) -> None:
        _ip("link", "set", port, "netns", self.switch_ns)
        _ip("-n", self.switch_ns, "link", "set", port, "master", "br0")
        _ip("-n", self.switch_ns, "link", "set", port, "up")

    # -- running things inside a host ----------------------------------------------------------
    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        h = self.hosts[host]
        return list(argv) if h.netns is None else ["ip", "netns", "exec", h.netns, *argv]

    def run(self, host: str, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(host, argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def popen(self, host: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start a long-running process inside `host` in its own session (a Ctrl-C of the test
        does not reach it; we stop it by PID). `ip netns exec` execs the program, so the Popen's
        PID is the program's own."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            return subprocess.Popen(self.argv(host, argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)

    def pids(self, host: str) -> list[int]:
        """Every process inside the host's namespace (all started by this test or by them)."""
        ns = self.hosts[host].netns
        if ns is None:
            raise ValueError("the client host shares the test's namespace")
        res = _ip("netns", "pids", ns, check=False)
        return [int(p) for p in res.stdout.split() if p.strip().isdigit()]

    def kill_all(self, host: str, sig: int = signal.SIGKILL) -> list[int]:
        """Signal every process in the host (a whole-machine crash with SIGKILL). Stopped
        processes are continued after a SIGTERM so they can act on it."""
        pids = self.pids(host)
        for pid in pids:
            try:
                os.kill(pid, sig)
                if sig != signal.SIGKILL:
                    os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        return pids

    # -- faults --------------------------------------------------------------------------------
    def isolate(self, host: str) -> None:
        _ip("-n", self.switch_ns, "link", "set", self.hosts[host].switch_port, "down")

    def rejoin(self, host: str) -> None:
        _ip("-n", self.switch_ns, "link", "set", self.hosts[host].switch_port, "up")

    def cut(self, a: str, b: str, mode: str = "drop") -> None:
        """Cut the traffic between hosts `a` and `b` in both directions (see the module doc)."""
        if mode not in ("drop", "reject"):
            raise ValueError(f"mode must be drop or reject, not {mode!r}")
        for src, dst in ((a, b), (b, a)):
            self._one_way(src, dst, mode, add=True)
            self._cuts.add((src, dst, mode))

    def uncut(self, a: str, b: str) -> None:
        for src, dst in ((a, b), (b, a)):
            for mode in ("drop", "reject"):
                if (src, dst, mode) in self._cuts:
                    self._one_way(src, dst, mode, add=False)
                    self._cuts.discard((src, dst, mode))

    def _one_way(self, src: str, dst: str, mode: str, add: bool) -> None:
        h = self.hosts[src]
        target = self.hosts[dst].address
        if h.netns is None:
            raise ValueError("cut the client host by isolating the other side instead")
        prefix = ["ip", "-n", h.netns]
        if mode == "drop" and add:
            cmd = [*prefix, "neigh", "replace", target, "lladdr", BOGUS_MAC, "dev", IFACE, "nud", "permanent"]
        elif mode == "drop":
            cmd = [*prefix, "neigh", "del", target, "dev", IFACE]
        else:
            cmd = [*prefix, "route", "add" if add else "del", "prohibit", f"{target}/32"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        if res.returncode != 0 and add:
            raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")

    def degrade(self, host: str, delay_ms: int = 0, loss_pct: float = 0.0) -> None:
        ns = self.hosts[host].netns
        if ns is None:
            raise ValueError("degrade a namespaced host")
        spec = ["delay", f"{delay_ms}ms"] if delay_ms else []
        spec += ["loss", f"{loss_pct:g}%"] if loss_pct else []
        res = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", IFACE, "root",
                              "netem", *spec], capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            raise NetnsUnavailable(f"tc netem failed: {res.stderr.strip()}")

    def restore(self, host: str) -> None:
        ns = self.hosts[host].netns
        if ns is not None:
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", IFACE, "root"],
                           capture_output=True, timeout=10)

    def heal(self) -> None:
        """Undo every fault: cuts, isolation, degradation."""
        for src, dst, mode in sorted(self._cuts):
            self._one_way(src, dst, mode, add=False)
        self._cuts.clear()
        for name, h in self.hosts.items():
            _ip("-n", self.switch_ns, "link", "set", h.switch_port, "up", check=False)
            if h.netns is not None:
                self.restore(name)

    def netem_supported(self) -> bool:
        """Whether `tc qdisc ... netem` works here (it needs the kernel's sch_netem)."""
        h = next((n for n, x in self.hosts.items() if x.netns is not None), None)
        if h is None:
            return False
        try:
            self.degrade(h, delay_ms=1)
        except NetnsUnavailable:
            return False
        self.restore(h)
        return True

    # -- tearing down ----------------------------------------------------------------------------
    def destroy(self) -> None:
        """Kill whatever still runs in our namespaces, then delete them and our root veth.
        Best effort and idempotent: it runs on failure paths too."""
        for name, h in list(self.hosts.items()):
            if h.netns is not None:
                self.kill_all(name)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
                self.pids(n) for n, h in self.hosts.items() if h.netns is not None):
            time.sleep(0.05)
        for link in self._root_links:
            _ip("link", "del", link, check=False)
        self._root_links.clear()
        for ns in reversed(self._namespaces):
            _ip("netns", "del", ns, check=False)
        self._namespaces.clear()

    def __enter__(self) -> Network:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()

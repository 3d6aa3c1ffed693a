"""The executor against real PostgreSQL servers and an in-memory store: the checks it makes at the
moment of acting, which no decision can make for it (safety review, finding 2 and "also")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgwarden.agent.executor import Executor, LocalFacts
from pgwarden.agent.lease import LeaseKeeper
from pgwarden.config.schema import ClusterSettings
from pgwarden.core.actions import AcquireLease, ExtendLease, Promote, RenewLease, StartPostgres
from pgwarden.fence.state import read_state
from pgwarden.fence.supervisor import Fencer
from pgwarden.postgres.controller import PostgresController
from tests.api.memstore import MemStore
from tests.support.memkv import MemKV
from tests.support.pg import NEEDS_POSTGRES, bootstrapped_primary, controller, make_node_config, teardown
from tests.support.ports import free_port
from tests.support.wait import wait_for

pytestmark = [
    pytest.mark.integration,
    NEEDS_POSTGRES,
]

HOST = "127.0.0.1"
SETTINGS = ClusterSettings()


def _executor(pg: PostgresController, store: MemStore, lease: LeaseKeeper, run_dir: Path) -> Executor:
    # The fencer's state file is written, but no fencer process is started: these tests are
    # about what the executor itself does, before any fencer would have to step in.
    run_dir.mkdir(parents=True, exist_ok=True)
    return Executor(pg._cfg, pg, store, lease, Fencer(run_dir), LocalFacts(), lambda: SETTINGS, SETTINGS)


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresController]:
    base = tmp_path_factory.mktemp("exec")
    p = bootstrapped_primary(make_node_config(base, "p", free_port(), free_port()))
    try:
        yield p
    finally:
        teardown(p)


def test_a_stale_lease_never_starts_a_primary(primary: PostgresController, tmp_path: Path) -> None:
    """`held` says yes, but the deadline passed while PostgreSQL was stopping (a leader's restart
    that took long): starting it as a primary now could make a second writable primary."""
    primary.stop("fast", 30)
    try:
        lease = LeaseKeeper(held=True, deadline=time.monotonic() - 0.1)
        ex = _executor(primary, MemStore(), lease, tmp_path)
        pgv = primary.observe(2)
        assert ex.run((StartPostgres("primary"),), None, pgv) is False
        assert primary.postmaster_pid() is None
        # The same action under a valid lease does start it: the refusal above was the lease's.
        lease.renewed(time.monotonic(), SETTINGS.ttl)
        assert ex.run((StartPostgres("primary"),), None, pgv) is True
        assert primary.postmaster_pid() is not None
    finally:
        primary.start(role="primary", upstream=None, wait_timeout=30)


def test_a_renewal_that_raises_after_promotion_demotes(primary: PostgresController, tmp_path: Path) -> None:
    """Rule 4: a promotion whose lease cannot be confirmed right after must not leave a primary."""
    cfg = make_node_config(tmp_path, "r", free_port(), free_port())
    r = controller(cfg)
    primary.ensure_slots({"r"})
    r.clone(HOST, primary._cfg.postgresql.port, timeout=60)
    try:
        r.start(role="replica", upstream=("p", HOST, primary._cfg.postgresql.port), wait_timeout=30)
        wait_for(lambda: r.observe(2).healthy or None, 30, "the replica answers")
        store = MemStore()
        store.down = True  # renew_leader raises StoreUnavailable
        lease = LeaseKeeper()
        lease.renewed(time.monotonic(), SETTINGS.ttl)
        ex = _executor(r, store, lease, tmp_path / "run")
        assert ex.run((Promote(),), None, r.observe(2)) is False
        assert (tmp_path / "run" / "fence.json").exists(), "the promotion was never attempted"
        v = wait_for(lambda: (lambda v: v if v.healthy else None)(r.observe(2)), 30, "the demoted server")
        assert v.in_recovery is True, "promoted without a confirmed lease and left writable"
    finally:
        teardown(r)


def test_the_leader_key_is_adopted_only_from_this_node_s_previous_run(
    primary: PostgresController, tmp_path: Path
) -> None:
    """Rule 5's "take the lease at once": a renewal while the keeper holds no lease adopts the key
    from the lease it sits on, but only if the fence state says this node's previous run held the
    lease (armed); an agent elsewhere that merely has the same name must not take it."""
    store = MemStore()
    previous = MemKV(store.cluster, store.mem._server)  # the dead run's store client
    assert previous.acquire("leader", "p", SETTINGS.ttl, 2)
    lease = LeaseKeeper()
    ex = _executor(primary, store, lease, tmp_path)
    pgv = primary.observe(2)
    assert not ex.fencer.armed
    assert ex.run((RenewLease(),), None, pgv) is False
    assert not lease.held and previous.renew("leader", "p", SETTINGS.ttl, 2)  # untouched
    ex.fencer.arm(time.monotonic() + SETTINGS.ttl, pgv.postmaster_pid)  # as the previous run left it
    sent = time.monotonic()
    assert ex.run((RenewLease(),), None, pgv) is True
    assert lease.held and sent < lease.deadline <= time.monotonic() + SETTINGS.ttl
    assert not previous.renew("leader", "p", SETTINGS.ttl, 2)  # it is ours now
    assert ex.run((RenewLease(),), None, pgv) is True  # and renews as any lease of ours


def test_a_parameter_postgresql_refuses_shows_its_fatal_line_in_the_log_and_the_facts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A node-file parameter PostgreSQL rejects: the start fails with PostgreSQL's own reason,
    logged by the agent and kept for /status (it used to be a bare "did not start")."""
    port = free_port()
    good = bootstrapped_primary(make_node_config(tmp_path, "n", port, free_port()))
    good.stop("fast", 30)
    bad = controller(make_node_config(tmp_path, "n", port, free_port(),
                                      parameters={"max_connections": "lots"}))
    try:
        lease = LeaseKeeper()
        lease.renewed(time.monotonic(), SETTINGS.ttl)
        ex = _executor(bad, MemStore(), lease, tmp_path / "run")
        with caplog.at_level("WARNING", logger="pgwarden"):
            assert ex.run((StartPostgres("primary"),), None, bad.observe(2)) is False
        cause = 'invalid value for parameter "max_connections": "lots"'
        assert cause in ex.facts.start_error and "FATAL: configuration file" in ex.facts.start_error
        assert "\n" not in ex.facts.start_error
        logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any(cause in m and "FATAL" in m for m in logged), logged
        assert bad.postmaster_pid() is None
    finally:
        teardown(bad)


def test_a_failsafe_extension_moves_the_lease_and_the_fencer_never_back(
        primary: PostgresController, tmp_path: Path) -> None:
    """Rule 17: the fencer's deadline moves only with a lease that is still held, only forward."""
    now = time.monotonic()
    lease = LeaseKeeper(held=True, deadline=now + 1.0)
    ex = _executor(primary, MemStore(), lease, tmp_path)
    ex.fencer.arm(lease.deadline, primary.postmaster_pid())
    pgv = primary.observe(2)
    assert ex.run((ExtendLease(now + 3.0),), None, pgv)
    fence = read_state(Fencer(tmp_path).state_file)  # the file the executor's fencer writes
    assert lease.deadline == now + 3.0 and fence is not None and fence.armed and fence.deadline == now + 3.0
    assert ex.run((ExtendLease(now + 2.0),), None, pgv)
    assert lease.deadline == now + 3.0
    lease.lost()
    assert ex.run((ExtendLease(now + 9.0),), None, pgv)
    assert not lease.held and lease.deadline == 0.0  # a lost lease is never revived


def test_a_failsafe_candidate_that_takes_the_lease_too_late_releases_it(
        primary: PostgresController, tmp_path: Path) -> None:
    store = MemStore()
    lease = LeaseKeeper()
    ex = _executor(primary, store, lease, tmp_path)
    pgv = primary.observe(2)
    assert ex.run((AcquireLease(not_after=time.monotonic() - 0.01),), None, pgv) is False
    assert not lease.held and store.snapshot(1.0).leader is None
    assert ex.run((AcquireLease(not_after=time.monotonic() + 5.0),), None, pgv) is True
    assert lease.held and (view := store.snapshot(1.0)).leader is not None and view.leader.name == ex.name


def test_a_lowered_ttl_brings_the_deadline_and_the_fencer_down_before_the_renewal_is_sent(
    primary: PostgresController, tmp_path: Path
) -> None:
    """Rule 2 with a ttl lowered by edit-config: the store may move the key onto the shorter lease
    even when its answer never reaches us, so the deadline (ours and the fencer's) must already be
    the shorter one when the renewal goes out."""
    store = MemStore()
    store.down = True  # the renewal's answer is lost
    lease = LeaseKeeper()
    lease.renewed(time.monotonic(), 30.0)  # the last renewal ran under ttl 30
    run = tmp_path / "run"
    run.mkdir()
    fencer = Fencer(run)
    fencer.arm(lease.deadline, primary.postmaster_pid())
    short = ClusterSettings(ttl=4.0)
    ex = Executor(primary._cfg, primary, store, lease, fencer, LocalFacts(), lambda: short, short)
    assert ex.run((RenewLease(),), None, primary.observe(2)) is False
    latest = time.monotonic() + short.ttl - 0.5
    assert lease.deadline <= latest, "our deadline still runs on the old, longer ttl"
    st = read_state(run / "fence.json")
    assert st is not None and st.armed and st.deadline <= latest, "the fencer waits for the old deadline"
    # A renewal under an unchanged ttl never moves the deadline back.
    lease.renewed(time.monotonic(), short.ttl)
    kept = lease.deadline
    assert ex.run((RenewLease(),), None, primary.observe(2)) is False
    assert lease.deadline == kept

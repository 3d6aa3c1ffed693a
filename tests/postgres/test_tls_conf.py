"""postgresql.tls in the files pgwarden writes (pure): ssl parameters that win over the user's,
hostssl-only TCP lines, verify-full in primary_conninfo; and which installations can serve TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgwarden.core.model import NO_SYNC
from pgwarden.postgres import binaries, conf
from pgwarden.postgres.tls import Installed, client_options, server_parameters

FILES = Installed(Path("/d/data.tls/server.crt"), Path("/d/data.tls/server.key"), Path("/d/data.tls/ca.crt"))


def render(**kw: object) -> str:
    state = conf.ConfState("replica", conf.Upstream("node1", "10.0.0.1", 5432), NO_SYNC, "1")
    return conf.render_postgresql_conf(
        data_dir=Path("/d/data"), listen_address="10.0.0.2", port=5432, member="node2",
        node_parameters={"ssl": "off", "ssl_cert_file": "mine.crt"}, cluster_parameters={},
        state=state, replication_user="replicator", passfile=Path("/d/data.pgpass"), socket_dir=None,
        **kw)  # type: ignore[arg-type]


def test_ssl_parameters_win_and_conninfo_verifies_the_upstream() -> None:
    text = render(ssl_parameters=server_parameters(FILES), upstream_ssl=client_options(FILES.ca))
    assert "\nssl = on\n" in text
    assert "ssl_cert_file = '/d/data.tls/server.crt'" in text
    assert "ssl_key_file = '/d/data.tls/server.key'" in text
    assert "ssl_ca_file = '/d/data.tls/ca.crt'" in text
    assert "sslmode=verify-full sslrootcert=/d/data.tls/ca.crt'" in text


def test_without_tls_nothing_changes() -> None:
    text = render()
    assert "ssl = 'off'" in text and "sslmode" not in text  # the node's own choice stands


def test_without_a_ca_the_upstream_is_encrypted_but_not_verified() -> None:
    assert client_options(None) == {"sslmode": "require"}
    assert "ssl_ca_file" not in server_parameters(Installed(FILES.cert, FILES.key, None))


def test_hba_with_tls_has_no_unencrypted_tcp_line() -> None:
    plain = conf.render_pg_hba(superuser="postgres")
    tls = conf.render_pg_hba(superuser="postgres", ssl=True)
    tcp = [line for line in tls.splitlines() if line.startswith("host")]
    assert len(tcp) == 8 and all(line.startswith("hostssl ") for line in tcp)
    assert tls.replace("hostssl", "host   ") == plain  # the same lines, columns kept


@pytest.mark.skipif(not (binaries.DEBIAN_ROOT / "15" / "bin" / "pg_config").exists(),
                    reason="needs Debian's PostgreSQL 15")
def test_an_installation_without_ssl_is_passed_over_when_tls_is_needed(tmp_path: Path) -> None:
    debian = binaries.DEBIAN_ROOT / "15" / "bin"
    assert binaries.has_ssl(debian)
    assert binaries.has_ssl(binaries.find_bin_dir(None, need_ssl=True))
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("postgres", "pg_ctl"):
        (fake / name).write_text("")
    with pytest.raises(binaries.BinariesError, match=r"without SSL support, which postgresql\.tls needs"):
        binaries.find_bin_dir(fake, need_ssl=True)

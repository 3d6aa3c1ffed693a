"""`ctl site-peers` against a real etcd: show, add, remove, one-line refusals that change nothing,
and the epoch never touched."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pgwarden.cli.site_peers import edited, normalize
from pgwarden.errors import CliError
from pgwarden.store.cluster import ClusterStore
from tests.cli.helpers import TIMEOUT, run_cli


def test_urls_are_normalized_and_bad_ones_refused() -> None:
    assert normalize("http://10.0.1.5:8008/") == "http://10.0.1.5:8008"
    assert normalize(" https://b1.example:8443 ") == "https://b1.example:8443"
    assert normalize("http://[::1]:8008") == "http://[::1]:8008"
    for bad in ("10.0.1.5:8008", "ftp://h:1", "http://h", "http://h:8008/status", "http://u:p@h:1",
                "http://h:99999"):
        with pytest.raises(CliError, match="not a REST API URL"):
            normalize(bad)


def test_editing_keeps_order_drops_duplicates_and_refuses_unknown_removals() -> None:
    peers = ("http://a:1", "http://b:1")
    assert edited(peers, ["http://c:1", "http://a:1/"], []) == ("http://a:1", "http://b:1", "http://c:1")
    assert edited(peers, [], ["http://a:1"]) == ("http://b:1",)
    with pytest.raises(CliError, match="not a peer of this site: http://z:1"):
        edited(peers, [], ["http://z:1"])


def test_show_add_remove_through_the_store(node_file: Path, store: ClusterStore) -> None:
    v = store.snapshot(TIMEOUT)
    assert store.set_site(replace(v.site, epoch=3, peers=("http://b1:8008",)), v.site.token or None, TIMEOUT)
    r = run_cli("ctl", "-c", str(node_file), "site-peers")
    assert r.code == 0 and "site epoch 3" in r.out and "http://b1:8008" in r.out
    r = run_cli("ctl", "-c", str(node_file), "site-peers", "--add", "http://b2:8008", "--remove", "http://b1:8008")
    assert r.code == 0, r.err
    site = store.snapshot(TIMEOUT).site
    assert site.peers == ("http://b2:8008",) and site.epoch == 3
    r = run_cli("ctl", "-c", str(node_file), "site-peers", "--remove", "http://nope:1")
    assert r.code != 0 and len(r.err.strip().splitlines()) == 1 and "not a peer" in r.err
    r = run_cli("ctl", "-c", str(node_file), "site-peers", "--add", "b3:8008")
    assert r.code != 0 and "not a REST API URL" in r.err
    assert store.snapshot(TIMEOUT).site.peers == ("http://b2:8008",)

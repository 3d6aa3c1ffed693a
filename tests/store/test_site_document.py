"""The site document (store/documents.py): written and read back through parse_view."""

from __future__ import annotations

from pgwarden.core.model import SiteState
from pgwarden.store.base import Entry
from pgwarden.store.documents import SITE, dump_site, parse_view


def test_site_document_round_trip_and_defaults() -> None:
    site = SiteState(epoch=3, peers=("http://b1:8008", "http://b2:8008"))
    view = parse_view({SITE: Entry(dump_site(site), "7")}, "A")
    assert view.site == SiteState(3, site.peers, "7", "A")
    assert parse_view({}, "A").site == SiteState(cluster="A")
    broken = parse_view({SITE: Entry('{"epoch": 1, "peers": "x"}', "8")}, "A")
    assert broken.site == SiteState(cluster="A")  # unreadable: skipped with a warning

"""GET /dashboard in a real headless Chromium against a real 3-node cluster with a managed
PgBouncer: the page lists the members, asks for the API's credentials, shows where clients are
routed, and its Switchover button moves the primary, which the page then shows. Also read at a
phone's width."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.support.browser import chromium, skip_without_chromium
from tests.support.cluster import Cluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    skip_without_chromium()
    with Cluster("dash", pgbouncer=True) as cl:
        yield cl


def roles(driver: webdriver.Chrome) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#members tbody tr")
    return {r.get_attribute("data-member") or "": r.get_attribute("data-role") or "" for r in rows}


def log_in(driver: webdriver.Chrome, cluster: Cluster) -> None:
    """Fill in the page's credentials form (it shows itself on the first 401)."""
    auth = cluster.config(cluster.names[0])["restapi"].get("authentication")
    if not auth:
        return
    wait_for(lambda: driver.find_element(By.ID, "login").is_displayed(), 15, "the credentials form")
    driver.find_element(By.ID, "user").send_keys(auth["username"])
    driver.find_element(By.ID, "password").send_keys(auth["password"])
    driver.find_element(By.ID, "login-save").click()


def test_the_page_lists_the_members_and_a_switchover_from_its_button_moves_the_primary(
        cluster: Cluster) -> None:
    old = cluster.wait_primary()
    cluster.wait_replicas([n for n in cluster.names if n != old])
    with chromium() as driver:
        driver.get(cluster.api(cluster.names[0]) + "/dashboard")
        log_in(driver, cluster)
        def listed() -> dict[str, str] | None:
            r = roles(driver)
            return r if set(r) == set(cluster.names) else None

        shown = wait_for(listed, 20, "the three members on the page")
        assert shown[old] == "primary"
        assert "leader " + old in driver.find_element(By.ID, "leaderline").text
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#decisions .decision"), 20,
                 "decisions on the page")
        driver.find_element(By.ID, "switchover").click()
        wait_for(lambda: "switchover:" in driver.find_element(By.ID, "notice").text, 10,
                 "the page confirming the switchover request")
        new = cluster.wait_primary(timeout=60, exclude=(old,))
        wait_for(lambda: roles(driver).get(new) == "primary" and roles(driver).get(old) != "primary", 30,
                 f"the page showing {new} as the primary")
        assert "leader " + new in driver.find_element(By.ID, "leaderline").text


def routes(driver: webdriver.Chrome) -> dict[str, tuple[str, str]]:
    """The routing section: route -> (its target members, its text)."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#routing tbody tr[data-route]")
    return {r.get_attribute("data-route") or "": (r.get_attribute("data-target") or "",
                                                 r.find_element(By.TAG_NAME, "td").text) for r in rows}


def test_the_routing_section_shows_the_primary_as_the_read_write_target(cluster: Cluster) -> None:
    leader = cluster.wait_primary()
    others = sorted(n for n in cluster.names if n != leader)
    cluster.wait_replicas(others)
    with chromium() as driver:
        # The leader's agent points PgBouncer and knows where: its page shows it, checked.
        driver.get(cluster.api(leader) + "/dashboard")
        log_in(driver, cluster)

        def pointed() -> dict[str, tuple[str, str]] | None:
            r = routes(driver)
            ok = r.get("pgbouncer", ("", ""))[0] == leader and "checked" in r["pgbouncer"][1]
            return r if ok and r.get("rw", ("", ""))[0] == leader else None

        shown = wait_for(pointed, 20, f"the routing section naming {leader}")
        assert shown["rw"][1] == leader
        assert sorted(shown["ro"][0].split(",")) == others and shown["ro"][1] == ", ".join(others)
        # A replica's agent does not point PgBouncer: its page names the leader's agent as the one.
        driver.get(cluster.api(others[0]) + "/dashboard")
        log_in(driver, cluster)
        r = wait_for(lambda: routes(driver) or None, 20, "the routing section on a replica's page")
        assert r["pgbouncer"][0] == leader and f"kept pointed at {leader}" in r["pgbouncer"][1], r
        assert r["rw"][0] == leader


def test_the_page_reads_at_a_phone_width(cluster: Cluster) -> None:
    cluster.wait_primary()
    with chromium(390, 844) as driver:
        driver.get(cluster.api(cluster.names[0]) + "/dashboard")
        log_in(driver, cluster)
        wait_for(lambda: set(roles(driver)) == set(cluster.names), 20, "the members on a phone")
        wait_for(lambda: "rw" in routes(driver), 20, "the routing section on a phone")
        # Nothing wider than the screen: no sideways scrolling.
        width = driver.execute_script("return document.documentElement.scrollWidth")
        inner = driver.execute_script("return window.innerWidth")
        assert width <= inner, f"page is {width}px wide on a {inner}px screen"

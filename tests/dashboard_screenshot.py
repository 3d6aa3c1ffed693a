"""Write docs/dashboard.png: a fresh local 3-node cluster with a managed PgBouncer, some writes and a
switchover so the page has lag, routing, history and decisions to show, then the page in headless
Chromium.

    PYTHONPATH=src:. .venv/bin/python -m tests.dashboard_screenshot [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import psycopg
from selenium.webdriver.common.by import By

from tests.integration.test_dashboard import log_in, roles, routes
from tests.support.browser import available, chromium
from tests.support.cluster import Cluster
from tests.support.wait import wait_for


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", default="docs/dashboard.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    if not available():
        raise SystemExit("needs Debian's chromium and chromium-driver "
                         "(apt-get install chromium chromium-driver)")
    with Cluster("shot", pgbouncer=True) as cl:
        old = cl.wait_primary()
        cl.wait_replicas([n for n in cl.names if n != old])
        with psycopg.connect(cl.dsn(), autocommit=True) as c:
            c.execute("CREATE TABLE demo (v text)")
            c.execute("INSERT INTO demo SELECT repeat('x', 500) FROM generate_series(1, 20000)")
        cl.ctl("switchover", "--force")
        new = cl.wait_primary(timeout=60, exclude=(old,))
        cl.wait_replicas([n for n in cl.names if n != new])
        with chromium(args.width, args.height) as driver:
            driver.get(cl.api(new) + "/dashboard")
            log_in(driver, cl)
            wait_for(lambda: roles(driver).get(new) == "primary", 30, "the page showing the new primary")
            wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#history tbody tr"), 20, "the history")
            wait_for(lambda: routes(driver).get("pgbouncer", ("", ""))[0] == new, 20, "PgBouncer's target")
            wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#decisions .decision")) > 1, 20,
                     "decisions")
            # Some writes while the page polls, so the lag charts have a line to draw.
            with psycopg.connect(cl.dsn(), autocommit=True) as c:
                for _ in range(6):
                    c.execute("INSERT INTO demo SELECT repeat('y', 500) FROM generate_series(1, 20000)")
            wait_for(lambda: driver.execute_script(
                "return Object.entries(lagSeries).filter(([m]) => m !== cluster.leader)"
                ".every(([, s]) => s.length >= 8)"), 60, "a few minutes' chart")
            height = int(driver.execute_script("return document.documentElement.scrollHeight"))
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": args.width, "height": max(args.height, height), "deviceScaleFactor": 1,
                "mobile": False})
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

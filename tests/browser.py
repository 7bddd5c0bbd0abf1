"""A real browser for the HTML report's tests: Debian's chromium driven by Playwright.

The ``browser`` fixture (in ``conftest.py``) launches it once per module; :class:`Page`
records console errors, script errors and failed requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def launch_browser() -> Iterator[Any]:
    """Launch the browser; skip the test where it or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (.ci/run installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is missing"
    )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Page:
    """A browser page that records console errors, script errors and failed requests."""

    def __init__(self, browser: Any, height: int = 900) -> None:
        self.page = browser.new_page(viewport={"width": 1200, "height": height})
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}"))

    def open(self, path: Path, query: str = "") -> Any:
        self.page.goto(path.as_uri() + query)
        self.page.wait_for_load_state("load")
        if path.name == "index.html":
            self.wait_drawn()
        return self.page

    def wait_drawn(self, *parts: str) -> None:
        """Wait until the grid shows the address's state and the address holds every part.

        The page sets the hash before it draws the grid (hashchange fires later), so a test
        that reads the cards right after the hash changed can see the previous state's cards.
        The page marks the state it drew in ``#grid[data-drawn]``.
        """
        self.page.wait_for_function(
            """parts => {
                const grid = document.getElementById('grid');
                const hash = location.hash.replace(/^#/, '');
                return grid && grid.dataset.drawn === hash && parts.every(p => hash.includes(p));
            }""",
            arg=list(parts),
        )

    def cards(self) -> list[str]:
        return self.page.eval_on_selector_all("#grid .card", "cs => cs.map(c => c.dataset.image)")

    def images_resolve(self) -> list[tuple[str, int]]:
        """Load every image now (lazy ones too); return each one's src and natural width."""
        self.page.evaluate(
            "() => document.querySelectorAll('img').forEach(i => i.loading = 'eager')"
        )
        self.page.wait_for_function(
            "() => [...document.images].every(i => i.complete)", timeout=15000
        )
        return self.page.eval_on_selector_all("img", "is => is.map(i => [i.src, i.naturalWidth])")

    def close(self) -> None:
        self.page.close()

"""The tiny demo's report.html in headless Chromium (Debian's `chromium`, driven by Playwright): it
loads without a console error or any network request, every thumbnail and plot loads, it has one card
per query and variant, and each filter shows exactly the cards it should."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from vsr_train.demo import SIZES
from vsr_train.report_html import OUTCOMES


def _browser_path() -> str:
    """Debian's chromium; missing tools fail in CI (.ci/run installs them) and skip elsewhere."""
    path = shutil.which("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        message = "needs Debian's chromium and the playwright package (apt-get install chromium; pip install playwright)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.mark.slow
def test_report_opens_in_chromium_and_filters_change_the_cards(tiny_demo, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = _browser_path()
    out = tiny_demo.check()
    page_file = out / "report.html"
    html = page_file.read_text()
    tags = [t.split() for t in re.findall(r'<article class="card"[^>]* data-tags="([^"]*)"', html)]
    variants = re.findall(r'<article class="card"[^>]* data-variant="([^"]+)"', html)
    keys = sorted(set(variants))
    turns = SIZES["tiny"].eval_turns
    assert len(keys) == 6 * turns + 2  # {sqr,hqr,next} x {policy,oracle} x turns, single shot, grounding only
    assert len(tags) == len(variants) == 4 * len(keys)  # every query of the tiny run, per variant

    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))

        def only_files(route):
            if not route.request.url.startswith("file://"):
                problems.append(f"network request to {route.request.url}")
                return route.abort()
            return route.continue_()

        page.route("**/*", only_files)
        page.goto(page_file.as_uri(), wait_until="load")
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("img").count() >= len(tags)  # a strip per turn, plus the plots

        cards = page.locator("article.card")
        assert cards.count() == len(tags)
        buttons = page.locator("[data-outcome]")
        assert buttons.count() == len(OUTCOMES) + 1
        options = page.locator("#variant-filter option")
        assert options.count() == len(keys) + 1

        def visible() -> int:
            return page.locator("article.card:visible").count()

        assert visible() == len(tags)
        changed = 0
        for tag in OUTCOMES:
            page.click(f'[data-outcome="{tag}"]')
            expected = sum(tag in t for t in tags)
            assert visible() == expected, tag
            assert page.inner_text("#shown-count") == f"{expected} of {len(tags)} cards shown"
            changed += expected != len(tags)
        assert changed > 0  # some filter hides cards (verdict right and wrong split the queries)
        page.click('[data-outcome="all"]')
        chosen = f"sqr_{turns}"
        page.select_option("#variant-filter", chosen)
        assert visible() == variants.count(chosen) == 4
        assert all(
            v == chosen
            for v in page.locator("article.card:visible").evaluate_all(
                "cards => cards.map(c => c.dataset.variant)"
            )
        )
        page.select_option("#variant-filter", "all")
        assert visible() == len(tags)

        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        cards.first.screenshot(path=str(tmp_path / "card.png"))
        browser.close()
    assert not problems, problems
    for shot in ("report.png", "card.png"):
        assert (tmp_path / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

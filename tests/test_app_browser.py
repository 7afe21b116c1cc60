"""The demo page in a real browser: Debian's Chromium driven by Playwright (no browser download).

Opens the page served by `python app.py`, picks an example, runs an attack, checks the rendered labels, images,
plot and neighbours, tries an out-of-range eps, and saves a full-page screenshot (its path is printed).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"{CHROMIUM} is absent: apt-get install chromium "
                       f"(`make` installs it for the browser tests)"),
]
playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (the `dev` extra)")
pytest.importorskip("gradio", reason="the demo needs the `demo` extra")

from test_app import make_models  # noqa: E402  (tests/ is on sys.path)

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py` in its own process. (In this process, Gradio's handler threads leave native threads that
    abort the interpreter at exit, "terminate called without an active exception", exit 134, after every test
    passed: the test run would fail.)"""
    import app_logic as L

    proc, url, _ = L.start_server(*make_models(tmp_path_factory.mktemp("browser_models")), timeout=240)
    yield url
    L.stop_server(proc)


@pytest.fixture
def page():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)  # a busy 2-core machine; each wait returns as soon as it holds
            yield page
        finally:
            browser.close()


def loaded_images(page, selector: str) -> int:
    """How many <img> under `selector` have actually been decoded by the browser."""
    return page.eval_on_selector_all(f"{selector} img", "els => els.filter(e => e.complete && e.naturalWidth > 0)"
                                     ".length")


def test_pick_example_attack_and_screenshot(server, page, tmp_path):
    page.goto(server)
    page.wait_for_selector("#run-attack")
    assert "rocl-zoo demo" in page.inner_text("h1")

    # The first example is the Fashion-MNIST ankle boot; picking it predicts with both models.
    page.locator(".gallery-item").first.click()
    robust = page.locator("#pred-robust")
    playwright.expect(robust).to_contain_text("Ankle boot")
    playwright.expect(page.locator("#true-class")).to_contain_text("True class: Ankle boot")
    playwright.expect(page.locator("#pred-baseline")).to_contain_text("%")
    page.wait_for_function("document.querySelectorAll('#model-view img').length > 0")

    # PGD l-inf (the default), eps 0.1, 10 steps, on the robust model.
    page.locator("#run-attack").click()
    summary = page.locator("#summary")
    playwright.expect(summary).to_contain_text("PGD l-inf")
    playwright.expect(summary).to_contain_text("Tracked class: Ankle boot (true class)")
    assert re.search(r"RoCL \(robust\)\s+white-box", summary.inner_text())
    assert re.search(r"Standard \(non-robust\)\s+transfer", summary.inner_text())
    for sel in ("#after-robust", "#after-baseline"):
        playwright.expect(page.locator(sel)).to_contain_text("%")
    page.wait_for_function("document.querySelectorAll('#adversarial img, #perturbation img').length >= 2")
    page.wait_for_function("[...document.querySelectorAll('#adversarial img, #perturbation img, #model-view img')]"
                           ".every(e => e.complete && e.naturalWidth > 0)")
    assert loaded_images(page, "#adversarial") == 1 and loaded_images(page, "#perturbation") == 1

    # Feature space: 5 neighbours per gallery, clean and attacked, and the cosine similarity line.
    playwright.expect(page.locator("#similarity")).to_contain_text("Cosine similarity")
    for role in ("robust", "baseline"):
        for which in ("clean", "attacked"):
            page.wait_for_function(f"document.querySelectorAll('#nn-{role}-{which} img').length === 5")
    playwright.expect(page.locator("#nn-robust-clean")).to_contain_text("1.00 Ankle boot")

    # The eps sweep arrives last: a rendered Vega chart with both models in its legend.
    page.wait_for_selector("#curve canvas, #curve svg.marks", state="attached")
    playwright.expect(page.locator("#curve")).to_contain_text("RoCL (robust)")
    playwright.expect(page.locator("#curve")).to_contain_text("Standard (non-robust)")

    shot = tmp_path / "demo_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("ROCL_ZOO_SCREENSHOT"):  # keep a copy where CI or a person can look at it
        shutil.copy(shot, os.environ["ROCL_ZOO_SCREENSHOT"])
    print(f"screenshot: {shot}")

    # An out-of-range eps: a message in the page, and the page keeps working.
    page.locator("#eps input").fill("0.9")
    page.locator("#run-attack").click()
    playwright.expect(page.get_by_text(re.compile(r"eps = 0\.9 is out of range"))).to_be_visible()
    page.locator("#eps input").fill("0.05")
    page.locator("#run-attack").click()
    playwright.expect(summary).to_contain_text("eps = 0.05")


def test_header_reads_as_lines_and_the_model_switch_changes_the_prediction(server, page):
    import app_logic as L

    page.goto(server)
    page.wait_for_selector("#run-attack")
    # One row per model: the two --model/--baseline folders, then the zoo's Fashion-MNIST entries; no raw keys.
    zoo = [L.zoo_profile(e).title for e in L.zoo_catalogue()]
    rows = page.locator("#models tbody tr")
    playwright.expect(rows).to_have_count(2 + len(zoo))
    header = page.inner_text("#models")
    assert "RoCL (robust)" in header and all(title in header for title in zoo)
    assert not re.search(r"results_|_acc\b|linf_0|:clean|n10000", header), header
    assert "▶" in rows.first.inner_text()  # the model under test: the --model folder
    if not zoo:
        pytest.skip("no released zoo weights in this tree: nothing to switch to")

    page.locator(".gallery-item").first.click()
    robust = page.locator("#pred-robust")
    playwright.expect(robust).to_contain_text("RoCL (robust): clean")
    playwright.expect(robust).to_contain_text("%")
    first = robust.inner_text()

    # Another entry: the header's mark, the prediction's title and its numbers follow it.
    page.locator("#model input").click()
    page.get_by_role("option", name=zoo[0], exact=True).click()
    playwright.expect(robust).to_contain_text(f"{zoo[0]}: clean")
    playwright.expect(page.locator("#models tbody tr", has_text="▶")).to_contain_text(zoo[0])
    page.wait_for_function("([sel, old]) => document.querySelector(sel).innerText !== old && "
                           "document.querySelector(sel).innerText.includes('%')", arg=["#pred-robust", first])
    assert robust.inner_text() != first

    page.locator("#run-attack").click()
    summary = page.locator("#summary")
    playwright.expect(summary).to_contain_text(f"aimed at {zoo[0]}, changed each pixel by at most 0.1")
    playwright.expect(page.locator("#after-robust")).to_contain_text(f"{zoo[0]}: attacked")

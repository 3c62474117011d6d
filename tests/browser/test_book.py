"""The rendered book, opened in a real browser (Debian's Chromium, driven by Playwright).

Run after `make book`. Every page of the table of contents is loaded from a local server with the
network otherwise unreachable, as a reader offline would see it. Screenshots of every page are
written to _build/screenshots/ for a person to look at.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tools import course

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Console messages that are expected and harmless. Keep this list short and explain each entry.
CONSOLE_ALLOWLIST = (
    # pydata-sphinx-theme logs this on a reader's first visit, before a light/dark mode is stored.
    "Got invalid theme mode",
)


def toc_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    return [f + ".html" for f in files]


def notebook_pages() -> list[str]:
    return [p for p in toc_pages() if p.startswith("notebooks/")]


pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail("the book is not built: run `make book` first")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        message = "Chromium is not installed (make browser installs Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update"])
        yield b
        b.close()


class PageVisit:
    """A page opened with everything that went wrong on the way recorded."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.console: list[str] = []
        self.failed: list[str] = []
        self.external: list[str] = []
        host = urlparse(url).netloc

        def route(r):
            if urlparse(r.request.url).netloc == host:
                r.continue_()
            else:                      # nothing outside the book may be needed offline
                self.external.append(r.request.url)
                r.abort()

        self.page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        self.page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: urlparse(r.url).netloc == host and self.failed.append(r.url))
        self.page.route("**/*", route)
        self.page.goto(url, wait_until="networkidle")

    def close(self):
        self.page.close()


@pytest.fixture(scope="module")
def visits(server, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    opened = {}
    for page in toc_pages():
        visit = PageVisit(browser, f"{server}/{page}")
        visit.page.wait_for_timeout(300)
        visit.page.screenshot(path=str(SHOTS / (page.replace("/", "__") + ".png")), full_page=True)
        opened[page] = visit
    yield opened
    for visit in opened.values():
        visit.close()


@pytest.mark.parametrize("page", toc_pages())
def test_page_has_no_errors_in_outputs_or_console(visits, page):
    visit = visits[page]
    outputs = " ".join(visit.page.eval_on_selector_all("article .cell_output", "els => els.map(e => e.innerText)"))
    assert "Traceback" not in outputs and "Error:" not in outputs, f"{page} shows an error in a cell output"
    assert visit.page.query_selector_all(".output.traceback, .output.error") == []
    errors = [m for m in visit.console if not any(a in m for a in CONSOLE_ALLOWLIST)]
    assert errors == [], f"console errors on {page}: {errors}"
    assert visit.external == [], f"{page} asked for outside resources (the book must work offline): {visit.external}"
    assert visit.failed == [], f"{page} failed to load: {visit.failed}"


@pytest.mark.parametrize("page", toc_pages())
def test_every_image_loads(visits, page):
    visit = visits[page]
    broken = visit.page.eval_on_selector_all(
        "article img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert broken == [], f"images that did not load on {page}: {broken}"


def test_pages_with_figures_show_them(visits):
    for page in ["book/history.html"] + notebook_pages():
        count = visits[page].page.eval_on_selector_all("article .cell_output img", "imgs => imgs.length")
        assert count >= 1, f"{page} shows no figure"


def test_math_is_rendered_by_the_bundled_mathjax(visits):
    pages_with_math = [p for p, v in visits.items() if v.page.query_selector("article .math")]
    assert pages_with_math, "no page has math; the test would prove nothing"
    for page in pages_with_math:
        page_obj = visits[page].page
        page_obj.wait_for_selector("article mjx-container", timeout=10_000)
        raw = page_obj.eval_on_selector_all("article .math", "els => els.filter(e => !e.querySelector('mjx-container')).length")
        assert raw == 0, f"{page}: {raw} formulas were not typeset"


@pytest.mark.parametrize("page", notebook_pages())
def test_colab_launch_button_and_badge_point_at_this_notebook(visits, page):
    expected = course.colab_url(ROOT / page.replace(".html", ".ipynb"))
    links = visits[page].page.eval_on_selector_all("a[href*='colab.research.google.com']", "as => as.map(a => a.href)")
    assert expected in links, f"{page}: no link to {expected}; found {links}"
    assert all(link == expected for link in links), f"{page}: a Colab link points elsewhere: {links}"
    launch = visits[page].page.query_selector(f".dropdown-launch-buttons a[href='{expected}']")
    assert launch is not None, "the launch button to Colab is missing"


@pytest.mark.parametrize("page", notebook_pages())
def test_solution_dropdowns_start_closed_and_open_on_click(visits, page):
    p = visits[page].page
    solutions = p.query_selector_all("div.solution")
    if not solutions:
        pytest.skip(f"{page} has no exercises")
    body = solutions[0].query_selector("section, .admonition-title ~ *")
    assert body is not None and not body.is_visible(), "the solution should be hidden at first"
    button = solutions[0].query_selector("button.toggle-button")   # the "Click to show" button of the title bar
    assert button is not None, "the solution has no toggle button"
    button.click()
    body.wait_for_element_state("visible", timeout=5000)
    assert body.is_visible(), "clicking the solution's toggle should show it"


def _films_play(page, expected: int, what: str) -> None:
    """Every matplotlib JavaScript film of a page runs offline: Play moves the slider and the frame."""
    players = page.query_selector_all("article .animation")
    assert len(players) == expected, f"the page should show {expected} films: {what}"
    for player in players:
        player.scroll_into_view_if_needed()
        frame = player.query_selector("img")
        slider = player.query_selector("input[type=range]")
        assert frame is not None and slider is not None, "the film has no frame or no slider"
        first, start = frame.get_attribute("src"), int(slider.input_value())
        player.query_selector("button[title='Play']").click()
        page.wait_for_timeout(1500)                               # several frames at 150-400 ms each
        player.query_selector("button[title='Pause']").click()
        assert int(slider.input_value()) > start, "pressing Play did not move the film forward"
        assert frame.get_attribute("src") != first, "the frame did not change while playing"
        assert frame.evaluate("i => i.complete && i.naturalWidth > 0"), "the current frame is not a loaded image"


def test_chapter_7s_films_play(visits):
    """Chapter 7's motions and videos (matplotlib's JavaScript player) must run in the rendered page, offline."""
    _films_play(visits["notebooks/07_beyond_images.html"].page, 2, "drawn motions and the two routes to video")


def test_chapter_11s_episodes_play(visits):
    """Chapter 11's episodes (the expert pushing a shape; the policy on held-out tasks) play offline."""
    _films_play(visits["notebooks/11_language_to_action.html"].page, 3,
                "the expert's push, the policy's episodes and a SayCan request carried out")


def test_chapter_9s_speech_plays(visits):
    """Chapter 9's spoken sentences are audio players with sound in them, offline."""
    page = visits["notebooks/09_speech_audio.html"].page
    players = page.query_selector_all("article audio")
    assert len(players) == 3, "chapter 9 should play one sentence in three voices"
    for player in players:
        player.scroll_into_view_if_needed()
        duration = player.evaluate("a => new Promise(done => a.readyState >= 1 ? done(a.duration) : "
                                   "(a.onloadedmetadata = () => done(a.duration), a.load()))")
        assert 0.5 < duration < 10, f"the audio should last a few seconds, got {duration}"


def test_the_denoising_animation_plays(visits):
    """Chapter 5's animation (matplotlib's JavaScript player) must run in the rendered page, offline."""
    page = visits["notebooks/05_diffusion.html"].page
    players = page.query_selector_all("article .animation")
    assert len(players) == 1, "chapter 5 should show one animation"
    frame = players[0].query_selector("img")
    slider = players[0].query_selector("input[type=range]")
    assert frame is not None and slider is not None, "the animation has no frame or no slider"
    first, start = frame.get_attribute("src"), int(slider.input_value())
    players[0].query_selector("button[title='Play']").click()
    page.wait_for_timeout(1500)                                   # several frames at 200 ms each
    players[0].query_selector("button[title='Pause']").click()
    assert int(slider.input_value()) > start, "pressing Play did not move the animation forward"
    assert frame.get_attribute("src") != first, "the frame did not change while playing"
    assert frame.evaluate("i => i.complete && i.naturalWidth > 0"), "the current frame is not a loaded image"


@pytest.mark.parametrize("page", notebook_pages())
def test_the_notebook_can_be_downloaded_as_ipynb(visits, server, page):
    """The download button offers the stored notebook (code as in the repository, no outputs)."""
    p = visits[page].page
    p.click(".dropdown-download-buttons button")
    link = p.wait_for_selector(".dropdown-download-buttons a[href$='.ipynb']", state="visible", timeout=5000)
    url = link.evaluate("a => a.href")
    assert url == f"{server}/_sources/{page.replace('.html', '.ipynb')}", f"{page}: the .ipynb link is {url}"
    response = p.request.get(url)
    assert response.ok, f"{url}: HTTP {response.status}"
    downloaded = json.loads(response.text())
    stored = json.loads((ROOT / page.replace(".html", ".ipynb")).read_text())
    code = lambda nb: ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]   # noqa: E731
    assert downloaded["nbformat"] == 4 and code(downloaded) == code(stored), "the download is not this notebook"
    p.keyboard.press("Escape")


def test_search_finds_pages_offline(server, browser):
    """The search page answers from the book's own index, with no network."""
    visit = PageVisit(browser, f"{server}/search.html?q=patch")
    try:
        results = visit.page.wait_for_selector("#search-results ul.search li", timeout=20_000)
        assert results is not None
        links = visit.page.eval_on_selector_all("#search-results ul.search li a", "as => as.map(a => a.href)")
        assert any("/notebooks/" in link for link in links), f"searching 'patch' found no chapter: {links}"
        summary = visit.page.inner_text("#search-results")
        assert "did not match any documents" not in summary
        errors = [m for m in visit.console if not any(a in m for a in CONSOLE_ALLOWLIST)]
        assert errors == [] and visit.external == [] and visit.failed == []
    finally:
        visit.close()
    page = browser.new_page()
    try:
        page.goto(f"{server}/{toc_pages()[0]}")
        action = page.eval_on_selector("form.bd-search", "f => f.action")
        assert action.split("?")[0] == f"{server}/search.html", "the search box does not lead to the search page"
    finally:
        page.close()

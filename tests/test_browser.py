"""The viewer in a real browser: `streamlit run` on 127.0.0.1, pages loaded in headless Chromium (Debian's, driven by
Playwright), screenshots checked for content, links followed and the back button pressed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.viewer_harness import browser_page, find_chromium, health, serve_viewer
from tests.viewer_data import build_analysed_run

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (`make test` installs Debian's chromium with apt-get; it could "
                             "not here), so the real-browser tests cannot run")


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`streamlit run apps/viewer.py` on a free port of 127.0.0.1 over a whole small analysed run."""
    run = build_analysed_run(tmp_path_factory.mktemp("browser"))
    with serve_viewer(run["root"]) as url:
        yield run | {"url": url}


@pytest.fixture(scope="module")
def page(viewer: dict):
    with browser_page(viewer["url"], CHROMIUM) as page:
        yield page


def open_view(page, url: str, text: str) -> None:
    page.goto(url)
    if "?page=" in url:  # an older link: the viewer reruns on the page's own path first
        page.wait_for_url(lambda address: "page=" not in address)
    page.get_by_text(text).first.wait_for()
    page.wait_for_load_state("networkidle")


def inked_fraction(png: Path) -> tuple[float, int]:
    """(fraction of pixels away from the background, number of grey levels) of a screenshot."""
    from PIL import Image

    pixels = list(Image.open(png).convert("L").getdata())
    return sum(p < 200 for p in pixels) / len(pixels), len(set(pixels))


def assert_not_blank(png: Path, page=None, attempts: int = 10) -> None:
    """A rendered page: many pixels away from the background and more than a handful of colours. With ``page``, the
    screenshot is taken again while the charts are still drawing (a loaded machine draws them seconds late)."""
    import time

    inked, levels = inked_fraction(png)
    for _ in range(attempts if page is not None else 0):
        if inked > 0.01 and levels > 20:
            break
        time.sleep(0.5)
        page.screenshot(path=str(png), full_page=True)
        inked, levels = inked_fraction(png)
    assert inked > 0.01 and levels > 20, f"{png} looks blank ({inked:.2%} inked)"


@pytest.mark.parametrize("view, text", [("stitching", "novel latents"), ("widths", "what each width of a family gives"),
                                        ("latent?run=fam&sae=16&latent=3", "fam · 16 · latent 3"),
                                        ("?page=Latent&run=fam&sae=16&latent=3", "fam · 16 · latent 3")])
def test_pages_render_in_a_real_browser(viewer: dict, page, tmp_path: Path, view: str, text: str) -> None:
    """Each page has its own path in the navigation (``/stitching``); a link of the older ``?page=`` form opens the
    same view."""
    assert health(viewer["url"]) == "ok"
    open_view(page, f"{viewer['url']}/{view}", text)
    assert page.locator("[data-testid=stException]").count() == 0
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert_not_blank(shot, page)


def test_a_link_opens_its_page_and_the_back_button_returns(viewer: dict, page) -> None:
    open_view(page, f"{viewer['url']}/latent?run=fam&sae=16&latent=3", "fam · 16 · latent 3")
    meta = viewer["decomposition"].of_latent(3)[0][0]
    page.get_by_role("link", name=f"meta-latent {meta}").click()
    page.get_by_text(f"meta · meta-latent {meta}").first.wait_for()
    assert f"/meta-latent?meta_run=meta&meta={meta}" in page.url
    page.go_back()
    page.get_by_text("fam · 16 · latent 3").first.wait_for()
    assert "latent=3" in page.url


def test_the_study_figures_come_first_in_a_real_browser(viewer: dict, page) -> None:
    """What a reader sees first: on the Stitching page the novel fraction by definition and its cross-seed control
    (the report's primary figures), the cosine proxy after them; on the Runs page the meta-SAEs apart."""
    open_view(page, f"{viewer['url']}/stitching", "novel latents (by definition)")
    labels = page.locator("[data-testid=stMetricLabel]").all_inner_texts()
    assert labels[:2] == ["novel latents (by definition)", "cross-seed control (by definition)"], labels
    assert labels.index("novel by cosine (proxy)") > 1
    open_view(page, viewer["url"], "Meta-SAEs")
    assert page.get_by_text("kept out of the width charts").count() == 1


def test_every_change_to_a_sidebar_control_takes(viewer: dict, page) -> None:
    """A researcher steps through latents with "+", types latent numbers and searches one token after another: each
    change shows what was asked. (Widgets rebuilt from the URL on every run dropped every second change: "+" four
    times from 10 gave 11, 11, 12, 12.)"""
    open_view(page, f"{viewer['url']}/latent?run=fam&sae=16&latent=3", "fam · 16 · latent 3")
    step_up = page.get_by_test_id("stNumberInputStepUp")
    for j in (4, 5, 6):
        step_up.click()
        page.get_by_text(f"fam · 16 · latent {j}").first.wait_for(timeout=30_000)
    box = page.get_by_test_id("stNumberInputField")
    for j in (9, 2, 12):
        box.fill(str(j))
        box.press("Enter")
        page.get_by_text(f"fam · 16 · latent {j}").first.wait_for(timeout=30_000)
    assert "latent=12" in page.url

    open_view(page, f"{viewer['url']}/search", "Search latents by a token")
    field = page.get_by_label("token or word", exact=True)
    for query in ("zzqx1", "zzqx2", "zzqx3"):
        field.fill(query)
        field.press("Enter")
        page.get_by_text(f"matching '{query}'").first.wait_for(timeout=30_000)
    assert "q=zzqx3" in page.url


def test_a_link_to_a_latent_the_sae_does_not_have_says_so(viewer: dict, page) -> None:
    """An index past the SAE's last latent shows the last one with a warning naming the range, not silently."""
    open_view(page, f"{viewer['url']}/latent?run=fam&sae=16&latent=99", "fam · 16 · latent 15")
    page.get_by_text("has latents 0 to 15: showing 15").first.wait_for(timeout=30_000)

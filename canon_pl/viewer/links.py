"""Deep links between the viewer's pages: every view is a URL (``latent?run=...&sae=...&latent=...``: the page's path
in Streamlit's multipage navigation, then the view's query parameters) that can be shared, opened in a new tab or
returned to with the browser's back button. Links of the older form ``?page=Latent&run=...`` still open their view."""

from __future__ import annotations

import html
from urllib.parse import urlencode

LOCAL_VIEWER = "http://127.0.0.1:8501"
"""Where the viewer serves by default (`canon-pl view`, or `streamlit run apps/viewer.py` from the repository root:
Streamlit's port 8501 on loopback): the report's links into it start here."""

PAGES = ("Runs", "Stitching", "Widths", "Latent", "Meta-latent", "Search")
"""The viewer's pages, in the sidebar's order: each is ``apps/viewer_pages/<page_module(page)>.py``."""


def page_module(page: str) -> str:
    """The module of ``page`` in ``apps/viewer_pages/`` (``Meta-latent`` -> ``meta_latent``)."""
    return page.lower().replace("-", "_")


def page_path(page: str) -> str:
    """The URL path of ``page`` (``Meta-latent`` -> ``meta-latent``); the first page is the viewer's root (``""``)."""
    return "" if page == PAGES[0] else page.lower()


def page_url(page: str, **params: object) -> str:
    """A relative URL that opens ``page`` with ``params`` (e.g. ``run``, ``sae``, ``latent``)."""
    if page not in PAGES:
        raise ValueError(f"unknown viewer page {page!r}; pages are {PAGES}")
    query = urlencode({k: str(v) for k, v in params.items() if v is not None})
    return f"{page_path(page)}?{query}" if query else page_path(page) or "./"


def parse_view(url: str) -> tuple[str, dict[str, str]]:
    """``(page, params)`` of a :func:`page_url` (``latent?run=fam&latent=3`` -> ``("Latent", {...})``)."""
    from urllib.parse import parse_qsl

    path, _, query = url.partition("?")
    path = path.strip("./")
    page = next((p for p in PAGES if page_path(p) == path), None)
    if page is None:
        raise ValueError(f"{url!r} names no viewer page; pages are {PAGES}")
    return page, dict(parse_qsl(query))


def latent_url(run: str, sae: str, latent: int) -> str:
    return page_url("Latent", run=run, sae=sae, latent=latent)


def meta_latent_url(meta_run: str, meta: int) -> str:
    return page_url("Meta-latent", meta_run=meta_run, meta=meta)


def anchor(text: object, url: str) -> str:
    """HTML link that opens in the same tab (so the back button returns to the page it came from)."""
    return f'<a href="{html.escape(url, quote=True)}" target="_self">{html.escape(str(text))}</a>'


__all__ = ["LOCAL_VIEWER", "PAGES", "anchor", "latent_url", "meta_latent_url", "page_module", "page_path", "page_url", "parse_view"]

"""The browser harness (kept with the tests, out of the package): start the viewer as ``streamlit run`` on
127.0.0.1 for scripted use (browser tests, the page-time benchmark, the README's screenshots) and open it in
headless Chromium through Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

APP = Path(__file__).resolve().parents[1] / "apps" / "viewer.py"
# What Chromium needs on a closed network: no background connections, no first-run or component updates.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    """Debian's Chromium, or ``None`` when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str) -> str:
    """What the app's health endpoint answers (``"ok"`` when it serves), or ``""``."""
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=10) as response:  # a busy app answers late
            return response.read().decode()
    except OSError:
        return ""


def example_views(root: Path, query: str) -> dict[str, tuple[str, str]]:
    """One representative view per page this folder feeds: ``{page: (its relative URL, text that shows once the page
    has rendered)}``. The widest cross-width stitching pair, the most frequent latent of the widest SAE with statistics, the
    densest meta-latent, a search for ``query``, the evaluated widths."""
    from canon_pl.meta import read_meta_analysis
    from canon_pl.stats import LatentStatistics
    from canon_pl.viewer import find_stitching_results
    from canon_pl.viewer.latents import find_statistics
    from canon_pl.viewer.meta import find_meta_runs

    from canon_pl.viewer.links import page_url

    found: dict[str, tuple[str, str]] = {"Runs": (page_url("Runs"), "Training of")}
    pairs = find_stitching_results(root)
    if pairs:  # the widest of the study's cross-width pairs (Matryoshka prefixes only when there is nothing else)
        shown = max((p for p in pairs if not p.nested), key=lambda p: p.widths, default=pairs[-1])
        found["Stitching"] = (page_url("Stitching", pair=shown.label), "novel latents")
    statistics = find_statistics(root)
    if statistics:
        run, path = next(iter(statistics.items()))
        stats = LatentStatistics.open(path)
        member = max(stats.members, key=lambda m: int(stats.index["members"][m]["d_sae"]))
        latent = int(stats.frequencies(member).argmax())
        found["Latent"] = (page_url("Latent", run=run, sae=member, latent=latent),
                           f"{run} · {member} · latent {latent}")
        found["Search"] = (page_url("Search", q=query), "promoted rank")
    meta_runs = find_meta_runs(root)
    if meta_runs:
        label, path = next(iter(meta_runs.items()))
        meta = int(read_meta_analysis(path, arrays=True)["decomposition"].meta_density().argmax())
        found["Meta-latent"] = (page_url("Meta-latent", meta_run=label, meta=meta),
                                f"{label} · meta-latent {meta}")
    from canon_pl.viewer.widths import evaluation_summaries, find_evaluations

    if not find_evaluations(evaluation_summaries(root)).empty:
        found["Widths"] = (page_url("Widths"), "vs width")
    return found


@contextmanager
def serve_viewer(checkpoints: str | Path, timeout_s: float = 90.0, cwd: Path | None = None,
                 canon_pl_view: bool = False, address: str | None = None) -> Iterator[str]:
    """Run ``streamlit run apps/viewer.py -- --checkpoints DIR`` (``canon-pl view --checkpoints DIR`` with
    ``canon_pl_view``) from ``cwd``, by default the repository root as the README says (``apps/.streamlit/
    config.toml`` keeps it on 127.0.0.1 from any folder; ``address`` chooses another), on a free port; yields its
    loopback URL once the health endpoint answers, stops it on exit."""
    if not APP.is_file():
        raise FileNotFoundError(f"{APP} is missing: the viewer runs from a checkout of canon-pl (pip install -e .)")
    port = free_port()
    folder = str(Path(checkpoints).resolve())
    bin_dir = Path(sys.executable).parent
    command = ([str(bin_dir / "canon-pl"), "view", "--checkpoints", folder, "--port", str(port)] if canon_pl_view
               else [str(bin_dir / "streamlit"), "run", str(APP), "--server.port", str(port), "--server.headless",
                     "true", *(["--server.address", address] if address else []), "--", "--checkpoints", folder])
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(command, cwd=cwd or APP.parents[1], stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "STREAMLIT_SERVER_HEADLESS": "true"})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while health(url) != "ok":
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the viewer did not start on {url}: {log.read()[-2000:]}")
                time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


@contextmanager
def browser_page(url: str, chromium: str, width: int = 1400, height: int = 1400) -> Iterator[Any]:
    """A Playwright page in headless ``chromium``, already warmed up on ``url`` (the first load after the server
    starts can be blank)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.get_by_text("canon-pl").first.wait_for()
            yield page
        finally:
            browser.close()


__all__ = ["APP", "CHROMIUM_ARGS", "browser_page", "example_views", "find_chromium", "free_port", "health", "serve_viewer"]

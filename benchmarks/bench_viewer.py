"""How long each viewer page takes to open on a real run, measured in one run: the script alone (Streamlit AppTest,
first open with cold loaders, then warm) and in a real browser (``streamlit run`` on 127.0.0.1, headless Chromium
driven by Playwright: navigation until the page's content shows, first visit and the median of three more).

The views are chosen from the folder: the largest stitching pair, the most frequent latent of the widest SAE with
statistics, the densest meta-latent, and a search for a token (``--query``). Ends with
``ratio: <slowest warm page open / 2 s>`` (goal < 1: every page opens in under 2 s; the browser time when Chromium
is here, else the script time).
Usage: ``python benchmarks/bench_viewer.py --checkpoints checkpoints [--query def] [--warm-visits 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the browser harness lives with the tests
from tests.viewer_harness import (  # noqa: E402
    APP,
    browser_page,
    example_views,
    find_chromium,
    serve_viewer,
)

BUDGET_S = 2.0
WARM_VISITS = 3


def script_times(root: Path, pages: dict[str, tuple[str, str]]) -> dict[str, tuple[float, float]]:
    """(first, second) wall seconds of each page's script run, in one process (shared Streamlit caches)."""
    from streamlit.logger import set_log_level
    from streamlit.testing.v1 import AppTest

    from canon_pl.viewer.links import parse_view

    set_log_level("error")  # AppTest outside a server warns on every cached call

    sys.argv = ["viewer.py", "--checkpoints", str(root)]
    times = {}
    for page, (view, _) in pages.items():
        runs = []
        name, params = parse_view(view)
        for _ in range(2):
            app = AppTest.from_file(str(APP), default_timeout=300)
            app.query_params.update({"page": name, **params})  # the entry opens the page a ?page= link names
            start = time.perf_counter()
            app.run()
            runs.append(time.perf_counter() - start)
            if app.exception:
                raise SystemExit(f"{page} raised: {app.exception}")
        times[page] = (runs[0], runs[1])
    return times


def browser_times(root: Path, pages: dict[str, tuple[str, str]], chromium: str,
                  warm_visits: int = WARM_VISITS) -> dict[str, tuple[float, float]]:
    """(first visit, median of the next ``warm_visits``) seconds from navigation until each page's content shows, on
    a fresh ``streamlit run``."""
    times = {}
    with serve_viewer(root) as url, browser_page(url, chromium) as tab:
        for page, (view, marker) in pages.items():
            runs = []
            for _ in range(1 + warm_visits):
                tab.goto("about:blank")
                start = time.perf_counter()
                tab.goto(f"{url}/{view}")
                tab.get_by_text(marker).first.wait_for()
                runs.append(time.perf_counter() - start)
            times[page] = (runs[0], statistics.median(runs[1:]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", required=True, help="a folder with a family, stats, stitching, meta-SAE")
    parser.add_argument("--query", default="def", help="the token searched for on the Search page")
    parser.add_argument("--warm-visits", type=int, default=WARM_VISITS,
                        help="browser visits of each page after the first, whose median is the warm time")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    root = Path(args.checkpoints)
    pages = example_views(root, args.query)
    missing = {"Runs", "Stitching", "Latent", "Meta-latent", "Search"} - set(pages)
    print(f"checkpoints: {root} ({len(pages)} pages; without data for: {sorted(missing) or 'none'})")
    script = script_times(root, pages)
    chromium = find_chromium()
    browser = browser_times(root, pages, chromium, max(args.warm_visits, 1)) if chromium else {}
    print(f"{'page':<12} {'script first':>13} {'script warm':>12} {'browser first':>14} {'browser warm':>13}")
    for page in pages:
        b = browser.get(page)
        print(f"{page:<12} {script[page][0]:>12.2f}s {script[page][1]:>11.2f}s "
              + (f"{b[0]:>13.2f}s {b[1]:>12.2f}s" if b else f"{'—':>14} {'—':>13}"))
    warm = [t[1] for t in (browser or script).values()]
    print(f"slowest warm page: {max(warm):.2f} s ({'browser' if browser else 'script'}); budget {BUDGET_S} s")
    print(f"ratio: {max(warm) / BUDGET_S:.3f}")


if __name__ == "__main__":
    main()

"""Screenshots of every viewer page for the README: one representative view per page of a checkpoints folder
(``tests/viewer_harness.py`` ``example_views``), opened in headless Chromium on a local ``streamlit run``.
Usage: ``python docs/screenshots.py --checkpoints DIR [--query def] [--out docs]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the browser harness lives with the tests
from tests.viewer_harness import browser_page, example_views, find_chromium, serve_viewer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoints", required=True)
    parser.add_argument("--query", default="def")
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--height", type=int, default=1500, help="viewport height in pixels (what one screen shows)")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("Chromium is not installed: apt-get install chromium")
    with serve_viewer(args.checkpoints) as url, browser_page(url, chromium, height=args.height) as page:
        for name, (view, marker) in example_views(Path(args.checkpoints), args.query).items():
            page.goto(f"{url}/{view}")
            page.get_by_text(marker).first.wait_for()
            page.wait_for_timeout(1500)  # charts draw after the text
            path = Path(args.out) / f"viewer_{name.lower().replace('-', '_')}.png"
            page.screenshot(path=str(path))
            print(f"{name}: {path}")


if __name__ == "__main__":
    main()

"""canon-pl viewer: ``streamlit run apps/viewer.py [-- --checkpoints DIR] [--any-folder]``.

From the repository root it listens on 127.0.0.1 only (``.streamlit/config.toml``; ``--server.address 0.0.0.0``
opens it to the network) and reads only below ``DIR`` (default ``checkpoints``), never through a symlink that leads
out of it, unless started with ``--any-folder``.

Pages: **Runs** (every SAE under ``checkpoints/`` with its held-out metrics, family charts and training curves),
**Stitching** (novel vs reconstruction latents of a pair, the path from S to L), **Latent** (examples, tokens,
nearest latents in the other widths, meta-SAE decomposition), **Meta-latent** (its member latents) and **Search**
(latents by a token), in Streamlit's multipage navigation. Every view is a URL (``/latent?run=...&latent=3``).
Read-only: it never writes to the checkpoints folder.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the page modules (apps/viewer_pages/) beside this file

from canon_pl.viewer.folders import ViewerFolderError, choose_folder  # noqa: E402
from canon_pl.viewer.links import PAGES, page_module, page_path  # noqa: E402


def checkpoints_dir() -> Path:
    """The folder the pages read: the sidebar's folder box, which starts at ``--checkpoints`` and may choose only
    below it unless the viewer was started with ``--any-folder`` (canon_pl/viewer/folders.py)."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--checkpoints", default="checkpoints")
    parser.add_argument("--any-folder", action="store_true")
    args, _ = parser.parse_known_args(sys.argv[1:])
    asked = st.sidebar.text_input("checkpoints folder", args.checkpoints,
                                  help="a folder below the one the viewer was started on" if not args.any_folder
                                  else "any folder this machine can read (started with --any-folder)")
    try:
        return choose_folder(args.checkpoints, asked, args.any_folder)
    except ViewerFolderError as err:
        st.error(str(err))
        st.stop()


def page_renderer(page: str, root: Path) -> Callable[[], None]:
    """What Streamlit runs for ``page``: its module's ``render(root)`` (``apps/viewer_pages/<module>.py``)."""

    def render() -> None:
        importlib.import_module(f"viewer_pages.{page_module(page)}").render(root)

    render.__name__ = page_module(page)
    return render


def main() -> None:
    st.set_page_config(page_title="canon-pl", layout="wide")
    root = checkpoints_dir()
    pages = {page: st.Page(page_renderer(page, root), title=page, url_path=page_path(page) or None,
                             default=i == 0)
             for i, page in enumerate(PAGES)}
    current = st.navigation(list(pages.values()))
    asked = st.query_params.get("page")
    if asked in pages:  # a link of the older form ?page=Latent&run=...: open that page with the rest of the query
        st.switch_page(pages[asked], query_params={k: v for k, v in st.query_params.items() if k != "page"})
    st.title(f"canon-pl · {current.title}")
    current.run()


main()

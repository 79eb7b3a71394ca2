"""canon-pl viewer: ``streamlit run apps/viewer.py [-- --checkpoints DIR] [--any-folder]``.

It serves this machine only: from any folder it listens on 127.0.0.1 (``apps/.streamlit/config.toml``, read by
Streamlit wherever ``streamlit run`` starts), as ``canon-pl view`` does; ``--server.address 0.0.0.0`` opens it to the
network on purpose, and a server listening everywhere without that choice refuses every page to other machines. It reads only regular files below ``DIR``
(default ``checkpoints``), never through a symlink that leads out of it, unless started with ``--any-folder``; a
damaged file gives a message naming it and the command that rebuilds it, not a traceback.

Pages: **Runs** (every SAE under ``checkpoints/`` with its held-out metrics, family charts and training curves),
**Stitching** (novel vs reconstruction latents of a pair, the path from S to L, the pair against its cross-seed
control), **Widths** (core metrics against width, seeds as bars), **Latent** (examples, tokens,
nearest latents in the other widths, meta-SAE decomposition), **Meta-latent** (its member latents) and **Search**
(latents by a token), in Streamlit's multipage navigation. Every view is a URL (``/latent?run=...&latent=3``).
Read-only: it never writes to the checkpoints folder.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import streamlit as st
from streamlit import config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the page modules (apps/viewer_pages/) beside this file

from canon_pl.errors import CanonError  # noqa: E402
from canon_pl.io.validate import reads_confined_to  # noqa: E402
from canon_pl.viewer.exposure import exposure_refusal  # noqa: E402
from canon_pl.viewer.folders import ViewerFolderError, choose_folder  # noqa: E402
from canon_pl.viewer.links import PAGES, page_module, page_path  # noqa: E402


def start_arguments() -> argparse.Namespace:
    """What the viewer was started with after ``--``: ``--checkpoints DIR`` and ``--any-folder``."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--checkpoints", default="checkpoints")
    parser.add_argument("--any-folder", action="store_true")
    return parser.parse_known_args(sys.argv[1:])[0]


def checkpoints_dir(args: argparse.Namespace) -> Path:
    """The folder the pages read: the sidebar's folder box, which starts at ``--checkpoints`` and may choose only
    below it unless the viewer was started with ``--any-folder`` (canon_pl/viewer/folders.py)."""
    asked = st.sidebar.text_input("checkpoints folder", args.checkpoints,
                                  help="a folder below the one the viewer was started on" if not args.any_folder
                                  else "any folder this machine can read (started with --any-folder)")
    try:
        return choose_folder(args.checkpoints, asked, args.any_folder)
    except ViewerFolderError as err:
        st.error(str(err))
        st.stop()


def page_renderer(page: str, root: Path, any_folder: bool) -> Callable[[], None]:
    """What Streamlit runs for ``page``: its module's ``render(root)`` (``apps/viewer_pages/<module>.py``), every
    file it reads confined to ``root`` (unless ``--any-folder``); a damaged file shows its reader's one-line error."""

    def render() -> None:
        try:
            with contextlib.nullcontext() if any_folder else reads_confined_to(root):
                importlib.import_module(f"viewer_pages.{page_module(page)}").render(root)
        except CanonError as err:
            st.error(f"{err}")

    render.__name__ = page_module(page)
    return render


def main() -> None:
    st.set_page_config(page_title="canon-pl", layout="wide")
    refusal = exposure_refusal(config.get_option("server.address"), st.context.ip_address)
    if refusal:
        st.error(refusal)
        st.stop()
    args = start_arguments()
    root = checkpoints_dir(args)
    pages = {page: st.Page(page_renderer(page, root, args.any_folder), title=page, url_path=page_path(page) or None,
                             default=i == 0)
             for i, page in enumerate(PAGES)}
    current = st.navigation(list(pages.values()))
    asked = st.query_params.get("page")
    if asked in pages:  # a link of the older form ?page=Latent&run=...: open that page with the rest of the query
        st.switch_page(pages[asked], query_params={k: v for k, v in st.query_params.items() if k != "page"})
    st.title(f"canon-pl · {current.title}")
    current.run()


main()

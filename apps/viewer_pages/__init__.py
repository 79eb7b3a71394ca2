"""The viewer's pages, one module each with ``render(root)``; ``canon_pl.viewer.links.PAGES`` lists them and
``page_module`` names each one's module. ``common`` holds what several pages share: the sidebar choices that are
read from and written back to the URL, and the cached readers."""

"""A damaged, odd or linked-out file below the viewer's folder costs one message naming it (and the command that
rebuilds it), never a hung page or a traceback; and the viewer serves this machine only wherever it is started."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from canon_pl.viewer.exposure import exposure_refusal
from tests.reliability.test_viewer_confinement import non_loopback_address
from tests.viewer_data import build_analysed_run, open_viewer
from tests.viewer_harness import health, serve_viewer


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_analysed_run(tmp_path_factory.mktemp("whole"))["root"]


def copy_of(analysed: Path, tmp_path: Path) -> Path:
    root = tmp_path / "served"
    shutil.copytree(analysed, root)
    return root


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def page_within(root: Path, seconds: float, **params: str):
    """The page opened on ``root``, or a failure when it has not rendered in ``seconds`` (a reader blocked on a FIFO
    blocks the page for ever: the test then opens each FIFO for writing so the thread can end)."""
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(app=open_viewer(root, **params)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        for fifo in (p for p in root.rglob("*") if p.is_fifo()):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"the {params.get('page', 'Runs')} page hung on a FIFO below its folder")
    app = result["app"]
    assert not app.exception, app.exception[0].message
    return app


def shown(app) -> str:
    return " ".join(m.value for m in (*app.error, *app.warning))


@pytest.mark.parametrize("relative, page, params", [
    ("fam/stitching/8_16.safetensors", "Stitching", {}),
    ("fam/stats/16.safetensors", "Search", {"q": "PLANTED"}),
    ("fam/16/sae.safetensors", "Latent", {"run": "fam", "sae": "16"}),
    ("meta/logs/version_0/metrics.csv", "Runs", {}),
])
def test_a_fifo_below_the_folder_never_hangs_a_page(analysed: Path, tmp_path: Path, relative: str, page: str,
                                                     params: dict) -> None:
    root = copy_of(analysed, tmp_path)
    make_fifo(root / relative)
    app = page_within(root, 60, page=page, **params)
    if relative.endswith("safetensors") and "sae" not in relative:
        assert "not a regular file" in shown(app) and relative in shown(app)


@pytest.mark.parametrize("relative, damage, page, params, rebuild", [
    ("fam/stitching/8_16.safetensors", truncate, "Stitching", {}, "canon-pl stitch"),
    ("fam/stitching/8_16.json", truncate, "Stitching", {}, "not a readable stitching results file"),
    ("fam/stats/16.safetensors", flip_a_byte, "Latent", {"run": "fam", "sae": "16"}, "canon-pl stats --run"),
    ("fam/stats/contexts.safetensors", truncate, "Search", {"q": "PLANTED"}, "canon-pl stats --run"),
    ("meta/analysis.safetensors", truncate, "Meta-latent", {}, "canon-pl meta-sae"),
])
def test_a_damaged_data_file_is_named_with_the_command_that_rebuilds_it(
        analysed: Path, tmp_path: Path, relative: str, damage: Callable[[Path], None], page: str, params: dict,
        rebuild: str) -> None:
    root = copy_of(analysed, tmp_path)
    damage(root / relative)
    message = shown(page_within(root, 120, page=page, **params))
    assert relative in message and rebuild in message, message


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("relative, change, page, params, rebuild", [
    ("fam/stats/stats.json", lambda d: d["members"]["16"].update(cofiring="junk"), "Latent",
     {"run": "fam", "sae": "16"}, "canon-pl stats --run"),
    ("fam/evaluation/summary.json", lambda d: d["rows"][0].update(width="wide"), "Widths", {}, "canon-pl evaluate"),
    ("fam/evaluation/summary.json", lambda d: d.update(rows={"a": 1}), "Widths", {}, "canon-pl evaluate"),
])
def test_a_hand_edited_index_is_named_not_a_traceback(analysed: Path, tmp_path: Path, relative: str,
                                                      change: Callable[[dict], None], page: str, params: dict,
                                                      rebuild: str) -> None:
    root = copy_of(analysed, tmp_path)
    edit_json(root / relative, change)
    message = shown(page_within(root, 120, page=page, **params))
    assert relative.rsplit("/", 1)[1] in message and "malformed" in message and rebuild in message, message


def test_names_from_the_data_files_are_shown_as_text_not_html(analysed: Path, tmp_path: Path) -> None:
    """A member name in stats.json (no checksum covers it) goes into the Latent page's HTML-enabled markdown
    escaped: a crafted name shows as text, never as markup."""
    root = copy_of(analysed, tmp_path)
    crafted = '<img src=x onerror="alert(1)">'
    edit_json(root / "fam" / "stats" / "stats.json", lambda d: d["members"]["16"].update(cofiring={"smaller": crafted}))
    app = page_within(root, 120, page="Latent", run="fam", sae="16")
    markdown = " ".join(m.value for m in app.markdown)
    assert "&lt;img src=x" in markdown and crafted not in markdown


def test_one_damaged_statistics_set_leaves_the_others_searchable(analysed: Path, tmp_path: Path) -> None:
    intact = page_within(analysed, 120, page="Search", q="tok1", whole="0")
    assert {"fam", "meta"} <= set(intact.dataframe[0].value["run"])
    root = copy_of(analysed, tmp_path)  # another folder: the viewer caches the sets it has opened
    flip_a_byte(root / "fam" / "stats" / "16.safetensors")
    app = page_within(root, 120, page="Search", q="tok1", whole="0")
    assert "fam left out of the search" in shown(app) and "fam/stats/16.safetensors" in shown(app)
    assert set(app.dataframe[0].value["run"]) == {"meta"}


@pytest.mark.parametrize("relative, page, params", [
    ("fam/stitching/8_16.safetensors", "Stitching", {}),
    ("fam/stats/16.safetensors", "Latent", {"run": "fam", "sae": "16"}),
])
def test_a_data_file_linked_out_of_the_folder_is_not_read(analysed: Path, tmp_path: Path, relative: str, page: str,
                                                          params: dict) -> None:
    root = copy_of(analysed, tmp_path)
    outside = tmp_path / "outside" / Path(relative).name
    outside.parent.mkdir()
    (root / relative).rename(outside)
    (root / relative).symlink_to(outside)  # the same bytes: only where they live is wrong
    message = shown(page_within(root, 120, page=page, **params))
    assert "leads out of" in message and relative in message, message
    opened = open_viewer(root, "--any-folder", page=page, **params)  # reading anywhere was asked for
    assert not opened.exception and "leads out of" not in shown(opened)


def test_a_page_is_refused_to_another_machine_only_when_no_address_was_chosen() -> None:
    for loopback in (None, "127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.1.1"):  # Streamlit reports some as None
        assert exposure_refusal(None, loopback) is None, loopback
    assert exposure_refusal(None, "::ffff:10.1.2.3") is not None and exposure_refusal(None, "junk") is not None
    assert exposure_refusal("0.0.0.0", "10.1.2.3") is None  # exposed on purpose
    refusal = exposure_refusal(None, "10.1.2.3")
    assert "10.1.2.3" in refusal and "canon-pl view" in refusal and "--server.address 0.0.0.0" in refusal


def test_canon_pl_view_listens_on_loopback_from_any_folder(tmp_path: Path) -> None:
    import socket

    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback interface to try the viewer's port on")
    (tmp_path / "checkpoints").mkdir()
    with serve_viewer(tmp_path / "checkpoints", cwd=tmp_path, canon_pl_view=True) as url:  # no config file here
        assert health(url) == "ok"
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, int(url.rsplit(":", 1)[1]))) != 0


def test_streamlit_run_from_another_folder_listens_on_loopback_unless_an_address_is_chosen(tmp_path: Path) -> None:
    """`streamlit run <repo>/apps/viewer.py` started where no config file is: the app's own
    apps/.streamlit/config.toml keeps it on 127.0.0.1 (no connection from another machine is accepted); an address
    chosen on the command line opens it on purpose."""
    import socket

    address = non_loopback_address()
    if address is None:
        pytest.skip("needs a non-loopback interface to try the viewer's port on")
    (tmp_path / "checkpoints").mkdir()
    with serve_viewer(tmp_path / "checkpoints", cwd=tmp_path) as url:  # `streamlit run` from a folder without config
        assert health(url) == "ok"
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, int(url.rsplit(":", 1)[1]))) != 0, "it answers another machine"
    with serve_viewer(tmp_path / "checkpoints", cwd=tmp_path, address="0.0.0.0") as url:  # exposed on purpose
        assert health(url.replace("127.0.0.1", address)) == "ok"
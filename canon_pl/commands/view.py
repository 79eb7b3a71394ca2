"""``canon-pl view``: open the viewer on a checkpoints folder, listening on 127.0.0.1 from any working folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from canon_pl.errors import SettingError
from canon_pl.viewer.exposure import EXPOSE_HINT, LOOPBACK

VIEWER_APP = Path(__file__).resolve().parents[2] / "apps" / "viewer.py"
"""The Streamlit app, beside the package in the repository (an editable install, as the README's set-up makes)."""

DESCRIPTION = f"""Start the viewer (`streamlit run apps/viewer.py`) on a checkpoints folder. It listens on {LOOPBACK}
wherever it is started; {EXPOSE_HINT.replace('`--server.address 0.0.0.0`', '--address 0.0.0.0')}."""


def viewer_command_line(checkpoints: str, address: str, port: int | None, any_folder: bool) -> list[str]:
    """The ``streamlit run`` command line that serves ``checkpoints`` on ``address`` (and ``port``, else Streamlit's
    8501)."""
    line = [sys.executable, "-m", "streamlit", "run", str(VIEWER_APP), "--server.address", address,
            "--browser.gatherUsageStats", "false"]
    if port is not None:
        line += ["--server.port", str(port)]
    return line + ["--", "--checkpoints", checkpoints] + (["--any-folder"] if any_folder else [])


def view(*, checkpoints: str = "checkpoints", address: str = LOOPBACK, port: int | None = None,
         any_folder: bool = False) -> int:
    """Serve the viewer until interrupted (Ctrl-C); this process becomes ``streamlit run``.

    Args:
        checkpoints: the folder it reads (and only below it)
        address: the interface it listens on; 0.0.0.0 opens it to the network
        port: the port (Streamlit's 8501 when not given)
        any_folder: let the sidebar's folder box choose any folder this machine can read
    """
    if not VIEWER_APP.is_file():
        raise SettingError(f"the viewer app {VIEWER_APP} is not beside this canon_pl: run canon-pl view from a clone "
                           f"of the repository installed with `pip install -e .` (make setup)")
    if not Path(checkpoints).is_dir():
        raise SettingError(f"checkpoints folder {checkpoints} does not exist: train a run first (make main) or pass "
                           f"--checkpoints DIR")
    if port is not None and not 0 < port < 65536:
        raise SettingError(f"port {port} is not a TCP port (1-65535)")
    line = viewer_command_line(checkpoints, address, port, any_folder)
    os.execv(line[0], line)  # Streamlit takes this process's place: Ctrl-C and signals reach it directly
    return 0  # not reached


__all__ = ["VIEWER_APP", "view", "viewer_command_line"]

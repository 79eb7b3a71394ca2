"""A writer killed between two renames of a multi-file set (an export, stitching results, a statistics folder, an
activation cache): readers then read one whole set, old or new, never a mix: the previous set stays readable until
the new one is complete (an activation cache may instead be refused with canon-pl's error: it is rebuilt, not
re-read); the next write leaves no temporary file behind."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from canon_pl import load_sae
from canon_pl.data import ShardIndex
from canon_pl.errors import CanonError
from canon_pl.stats import LatentStatistics
from canon_pl.stitching import read_stitching_results
from tests.helpers import REPO
from tests.reliability.test_guards import WRITERS


def plain(value: object) -> object:
    """``value`` with every tensor as a nested list and every dataclass as a dict: comparable with ``==``."""
    import dataclasses

    import torch

    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value):
        return plain(dataclasses.asdict(value))
    return value


def read_export(folder: Path) -> object:
    sae = load_sae(folder)
    return plain({"cfg": sae.cfg, "weights": sae.state_dict()})


def read_statistics(folder: Path) -> object:
    from safetensors import safe_open

    stats = LatentStatistics.open(folder)
    arrays = {}
    for member in stats.members:
        with safe_open(str(folder / stats.index["members"][member]["file"]), framework="pt") as f:
            arrays[member] = {key: stats.array(member, key) for key in f.keys()}
    contexts = stats.contexts() if (folder / "contexts.safetensors").exists() else None
    return plain({"index": stats.index, "arrays": arrays, "contexts": contexts, "tokens": stats.token_strings()})


def read_cache(folder: Path) -> object:
    index = ShardIndex.load(folder)
    return plain([index.read_shard(i) for i in range(len(index.shards))])


READERS: dict[str, Callable[[Path], object]] = {
    "export": read_export,
    "stitching results": lambda folder: plain(read_stitching_results(folder / "8_16.json", arrays=True)),
    "statistics": read_statistics,
    "meta statistics": read_statistics,
    "activation cache": read_cache,
}
MAY_REFUSE = {"activation cache"}
"""Sets a kill may leave refused (with what to do) rather than readable."""
KILLS_PER_WRITER = 4  # SIGKILL after the 1st, 2nd, ... rename of the second write (a set has 2 to 5 files)

# Forks one child per write from a process that has run no torch op (so no thread pool is copied into a child):
# the first child writes set 1 whole, the second set 2 and SIGKILLs itself right after its n-th rename.
KILLER = """
import os, signal, sys
from pathlib import Path
from tests.reliability.test_guards import WRITERS

root = Path(sys.argv[1])
for name in sys.argv[2:]:
    for kill_after in range(1, {kills} + 1):
        folder = root / f"{{name}}-{{kill_after}}"
        for seed, dies_after in ((1, None), (2, kill_after)):
            pid = os.fork()
            if pid == 0:
                if dies_after is not None:
                    real_replace, done = os.replace, [0]

                    def replace(src, dst):
                        real_replace(src, dst)
                        done[0] += 1
                        if done[0] == dies_after:
                            os.kill(os.getpid(), signal.SIGKILL)

                    os.replace = replace
                WRITERS[name](folder, seed)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            if os.WIFSIGNALED(status):  # the kill landed before the set was complete
                (root / f"{{name}}-{{kill_after}}.killed").touch()
""".format(kills=KILLS_PER_WRITER)


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("killed")
    subprocess.run([sys.executable, "-c", KILLER, str(root), *READERS], cwd=REPO, check=True, timeout=600)
    return root


@pytest.mark.parametrize("writer", list(READERS))
def test_a_set_killed_between_renames_reads_whole_old_or_new_never_a_mix(killed: Path, tmp_path: Path,
                                                                          writer: str) -> None:
    whole = []
    for seed in (1, 2):
        WRITERS[writer](tmp_path / str(seed), seed)
        whole.append(READERS[writer](tmp_path / str(seed)))
    assert whole[0] != whole[1]
    died_mid_set = 0
    for kill_after in range(1, KILLS_PER_WRITER + 1):
        folder = killed / f"{writer}-{kill_after}"
        died_mid_set += (killed / f"{writer}-{kill_after}.killed").exists()
        try:
            read = READERS[writer](folder)
        except CanonError as err:
            assert writer in MAY_REFUSE, f"{writer} killed after rename {kill_after}: the previous set is unreadable: {err}"
            assert "again" in str(err) or "re-run" in str(err) or "rebuild" in str(err), err  # says what to do
        else:  # read: then it read one whole set
            assert read in whole, f"{writer} killed after rename {kill_after}: read a mix of two sets"
        WRITERS[writer](folder, 3)  # the next write completes and removes the dead writer's temporaries
        assert not list(folder.rglob("*.tmp")), f"temporaries left after rewriting {folder.name}"
        assert not list(folder.rglob("*.previous")), f"previous copies left after rewriting {folder.name}"
        READERS[writer](folder)
    assert died_mid_set, f"no kill of {writer} landed between two of its renames"


class Killed(BaseException):
    """Stands for a SIGKILL right after a rename (raised past every ``except Exception``)."""


@pytest.mark.parametrize("writer", ["export", "stitching results"])
def test_two_writers_killed_in_a_row_between_renames_leave_the_last_whole_set_readable(
        tmp_path: Path, writer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set 1 written whole; sets 2 and 3 each killed after their data file's rename, before their index's: the
    index still names set 1, and the copy of it kept aside survives the second killed write."""
    import os

    folder = tmp_path / "set"
    WRITERS[writer](folder, 1)
    first = READERS[writer](folder)
    real_replace = os.replace
    for seed in (2, 3):
        renames = [0]

        def replace(src, dst, renames=renames):
            real_replace(src, dst)
            renames[0] += 1
            if renames[0] == 1:
                raise Killed

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            WRITERS[writer](folder, seed)
        monkeypatch.setattr(os, "replace", real_replace)
    assert READERS[writer](folder) == first

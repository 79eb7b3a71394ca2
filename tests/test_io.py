"""Loading and saving SAEs: round trips, and one clear error for every kind of bad file."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from canon_pl import CheckpointError, export_sae, load_sae
from canon_pl.io import atomic_path, atomic_write_json
from canon_pl.sae import SAEConfig, build_sae


@pytest.fixture
def exported(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    sae = build_sae(SAEConfig(d_in=12, d_sae=40, k=3, hook_point="model.layers.3", model_id="toy"))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    sae.threshold.fill_(0.25)
    sae.threshold_initialized.fill_(True)
    return sae, export_sae(sae, tmp_path / "export", activation_scale=2.0)


def test_export_round_trip_takes_raw_activations(exported) -> None:
    sae, directory = exported
    loaded = load_sae(directory)
    x = torch.randn(16, 12) * 5
    assert torch.allclose(loaded(x), sae(x * 2.0) / 2.0, atol=1e-5)
    assert loaded.cfg.hook_point == "model.layers.3" and loaded.cfg.model_id == "toy"
    cfg = json.loads((directory / "cfg.json").read_text())
    assert cfg["canon_pl_version"] and cfg["activation_scale_folded"] == 2.0
    assert torch.allclose(load_sae(directory / "sae.safetensors")(x), loaded(x))


def test_truncated_weights_are_detected(exported) -> None:
    _, directory = exported
    weights = directory / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="checksum"):
        load_sae(directory)


def test_corrupt_weights_without_checksum_are_reported_as_unreadable(exported) -> None:
    _, directory = exported
    cfg = json.loads((directory / "cfg.json").read_text())
    del cfg["weights_sha256"]
    (directory / "cfg.json").write_text(json.dumps(cfg))
    (directory / "sae.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_sae(directory)


def test_unknown_files_are_refused_naming_what_was_found(tmp_path: Path) -> None:
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 768, "d_sae": 24576}))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"not an SAE canon-pl recognises \(files: \['cfg.json', 'weights.bin'\]"):
        load_sae(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"")  # now SAELens files: forcing our format says why not
    with pytest.raises(CheckpointError, match="not a canon-pl export"):
        load_sae(tmp_path, format="canon_pl")


def test_unknown_config_keys_fail_loudly(exported) -> None:
    _, directory = exported
    cfg = json.loads((directory / "cfg.json").read_text())
    cfg["sae"]["jump_relu_bandwidth"] = 0.001
    (directory / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown SAE config keys"):
        load_sae(directory)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_malicious_pickle_checkpoint_is_refused_without_running_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _Payload()}, bad)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_sae(bad)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_garbage_ckpt_and_missing_paths_get_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "broken.ckpt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_sae(tmp_path / "broken.ckpt")
    torch.save({"model": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a canon-pl SAEModule checkpoint"):
        load_sae(tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_sae(tmp_path / "nowhere")


def test_failed_atomic_write_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    atomic_write_json(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "half')
            raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_pickle_module_is_not_used_for_exports(exported) -> None:
    _, directory = exported
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads((directory / "sae.safetensors").read_bytes())


def _documents(root: Path) -> dict[str, tuple[Path, object]]:
    """One real document of each kind canon-pl writes: ``{kind: (its JSON, a reader of it)}``."""
    from canon_pl.io import read_export_config, read_family_manifest, write_family_manifest
    from canon_pl.stitching import analyze_pair, read_stitching_results, write_stitching_results
    from tests.test_stitching import random_trained_like

    small, large = random_trained_like(16, seed=1), random_trained_like(32, seed=2)
    export_sae(small, root / "fam" / "16")
    export_sae(large, root / "fam" / "32")
    write_family_manifest(root / "fam", {16: "16", 32: "32"}, small.cfg, tokens=0)
    results = write_stitching_results(analyze_pair(small, large, torch.randn(200, 32)), root / "fam" / "stitching")
    return {"export": (root / "fam" / "16" / "cfg.json", lambda: read_export_config(root / "fam" / "16")),
            "family": (root / "fam" / "family.json", lambda: read_family_manifest(root / "fam")),
            "stitching": (results, lambda: read_stitching_results(results))}


@pytest.mark.parametrize("kind", ["export", "family", "stitching"])
def test_every_document_records_its_format_and_refuses_a_newer_or_foreign_one(tmp_path: Path, kind: str) -> None:
    """One versioned document reader: each kind is stamped with format, format_version and the canon-pl version,
    and a file from a newer canon-pl or of another format gets the same one-line refusal, in the kind's error."""
    from canon_pl.errors import CanonError

    path, read = _documents(tmp_path)[kind]
    document = json.loads(path.read_text())
    assert {"format", "format_version", "canon_pl_version"} <= set(document)
    read()
    path.write_text(json.dumps({**document, "format_version": document["format_version"] + 1}))
    with pytest.raises(CanonError, match="newer than this canon_pl understands .*; upgrade canon_pl"):
        read()
    path.write_text(json.dumps({**document, "format": "someone.else"}))
    with pytest.raises(CanonError, match=f"is not a canon-pl .*no \"format\": \"{document['format']}\""):
        read()


def test_an_edited_config_is_refused_naming_the_digest_and_a_deliberate_edit_can_drop_it(exported) -> None:
    """The weights' checksum does not cover cfg.json: an edited k or hook point once loaded silently."""
    _, directory = exported
    original = json.loads((directory / "cfg.json").read_text())
    assert load_sae(directory).cfg.k == original["sae"]["k"]
    cfg = json.loads(json.dumps(original))
    cfg["sae"]["k"] = original["sae"]["k"] + 1
    (directory / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="was changed after export.*delete the \"config_sha256\" entry"):
        load_sae(directory)
    del cfg["config_sha256"]  # the researcher meant it
    (directory / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(directory).cfg.k == original["sae"]["k"] + 1
    (directory / "cfg.json").write_text(json.dumps(original, indent=4))  # re-formatting is no edit
    assert load_sae(directory).cfg.k == original["sae"]["k"]


def test_resume_takes_the_newest_whole_checkpoint_when_a_kill_left_last_ckpt_dangling(tmp_path: Path) -> None:
    """`save_last: link` makes last.ckpt a link to the newest step checkpoint; a kill between writing the next one and
    moving the link can leave it dangling, and resuming then started again from step 0."""
    from canon_pl.commands.derived_config import resume_arguments
    from canon_pl.io.checkpoint import newest_checkpoint

    ckpt = tmp_path / "run" / "ckpt"
    assert newest_checkpoint(tmp_path / "run") is None and resume_arguments(tmp_path / "run") == []
    ckpt.mkdir(parents=True)
    for step in (250, 500):
        (ckpt / f"epoch=0-step={step}.ckpt").write_bytes(b"x")
    (ckpt / "last.ckpt").symlink_to(ckpt / "epoch=0-step=750.ckpt")  # the step it named was never completed
    assert newest_checkpoint(tmp_path / "run") == ckpt / "epoch=0-step=500.ckpt"
    assert resume_arguments(tmp_path / "run") == ["--ckpt_path", str(ckpt / "epoch=0-step=500.ckpt")]
    for step in (250, 500):
        (ckpt / f"epoch=0-step={step}.ckpt").unlink()
    (ckpt / "last.ckpt").unlink()
    (ckpt / "last.ckpt").write_bytes(b"x")  # save_last: true copies instead of linking
    assert newest_checkpoint(tmp_path / "run") == ckpt / "last.ckpt"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_exports_and_checkpoints_get_the_mode_the_users_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    """Written atomically (a private temporary renamed into place), yet readable by whom the user's umask says, as a
    file open() creates would be: a study in a group folder is readable by the group."""
    import os
    import stat

    from canon_pl.io import export_sae
    from canon_pl.sae import BatchTopKSettings, initial_sae
    from canon_pl.training.checkpoint_io import AtomicCheckpointIO

    previous = os.umask(umask)
    try:
        export_sae(initial_sae(BatchTopKSettings(k=2).sae_config(8, 16), 0), tmp_path / "export")
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "run.ckpt")
    finally:
        os.umask(previous)
    for path in [*(tmp_path / "export").iterdir(), tmp_path / "run.ckpt"]:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path

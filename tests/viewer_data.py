"""A whole small analysed run (family, statistics, stitching, meta-SAE) for the viewer's tests, and the viewer opened
on a folder as `streamlit run apps/viewer.py -- --checkpoints DIR` would (Streamlit AppTest, no browser)."""

from __future__ import annotations

import sys
from pathlib import Path

from canon_pl.sae import SAEConfig, build_sae

APP = str(Path(__file__).resolve().parents[1] / "apps" / "viewer.py")


def open_viewer(root: Path, *flags: str, **params: str):
    """The viewer started on ``root`` (``-- --checkpoints root`` plus ``flags``) at the query parameters ``params``,
    after its first run. It reads ``sys.argv`` as `streamlit run` passes it; the conftest restores it after each
    test."""
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    if config._main_script_path != str(APP):  # as `streamlit run` sets it: the app's own .streamlit/config.toml
        config._main_script_path = str(APP)
        config.get_config_options(force_reparse=True)
    sys.argv = ["viewer.py", "--checkpoints", str(root), *flags]
    app = AppTest.from_file(APP, default_timeout=60)
    app.query_params.update(params)
    return app.run()


def build_analysed_run(root: Path) -> dict:
    """A whole small run as a researcher has it after a session: a two-width family (8 and 16 latents; the planted
    latent 0 of the small SAE is copied into the large one as its latent 3) with statistics, stitching results, its
    evaluation (SAEBench's core metrics, from a cache of the same tokens) and a meta-SAE on the 16-latent member with
    its own statistics, all written under ``root``. Returns the root, the
    stitching summary, the meta decomposition and the planted token."""
    import torch

    from canon_pl import load_sae
    from canon_pl.cli import main as canon_pl_main
    from canon_pl.io import export_sae, write_family_manifest
    from canon_pl.meta import read_meta_analysis
    from canon_pl.stats import (
        collect_statistics,
        unembedding_directions,
        write_statistics,
    )
    from canon_pl.stats.files import write_meta_statistics
    from canon_pl.stitching import analyze_pair, write_stitching_results
    from tests.test_stats import planted_run

    small, batches, token = planted_run()
    large = build_sae(SAEConfig(d_in=small.d_in, d_sae=16, architecture="relu", hook_point="blocks.0",
                                model_id="toy"))
    with torch.no_grad():
        large.W_enc[:, 3], large.W_dec[3], large.b_enc[3] = small.W_enc[:, 0], small.W_dec[0], small.b_enc[0]
    large.eval()
    family = root / "fam"
    export_sae(small, family / "8")
    export_sae(large, family / "16")
    write_family_manifest(family, {8: "8", 16: "16"}, small.cfg, tokens=0)
    activations = torch.cat([acts[mask] for _, acts, mask in batches])
    stitching = analyze_pair(small, large, activations)
    write_stitching_results(stitching, family / "stitching")
    from canon_pl.commands.evaluate import evaluate
    from canon_pl.data.shards import write_activation_shards

    half = activations.shape[0] // 2  # SAEBench's core metrics for the Widths page, from a cache of these tokens
    write_activation_shards([activations[:half]], root / "cache", tokens_per_shard=half, dtype="float32",
                            metadata={"hook_point": "blocks.0"}, val_batches=[activations[half:]])
    assert evaluate(str(family), data=str(root / "cache"), tokens=half) == 0
    saes = {"8": small, "16": large}
    collectors, contexts, cofiring = collect_statistics(saes, batches, cofiring={("16", "8"): None}, n_top=4,
                                                        n_sample=3, window=2)
    unembed = torch.randn(50, small.d_in, generator=torch.Generator().manual_seed(0))
    strings = {i: f"tok{i}" for i in range(50)} | {token: " PLANTED"}
    write_statistics(family / "stats", collectors, torch.cat(contexts),
                     {n: unembedding_directions(s.W_dec.detach(), unembed, n=3) for n, s in saes.items()},
                     {"model_id": "toy"}, token_strings=strings,
                     cofiring={("16", "smaller"): ("8", *cofiring[("16", "8")].best_partners())})
    assert canon_pl_main(["meta-sae", "--sae", str(family), "--width", "16", "--d-sae", "4", "--k", "2", "--steps", "20",
                          "--batch-size", "16", "--baseline-steps", "0", "--out", str(root / "meta"),
                          "--accelerator", "cpu"]) == 0
    analysis = read_meta_analysis(root / "meta", arrays=True)
    meta = load_sae(root / "meta")
    write_meta_statistics(root / "meta" / "stats", analysis["decomposition"],
                          unembedding_directions(meta.W_dec.detach(), unembed, n=3), {"base": analysis["base"]},
                          token_strings=strings)
    return {"root": root, "stitching": stitching.summary, "decomposition": analysis["decomposition"],
            "token": token}

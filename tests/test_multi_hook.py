"""Several hook points in one pass: one LM forward read at every hook point, a family per hook point, and the run's
exports, stitching, statistics and viewer handling each hook point's family on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from canon_pl.errors import SettingError
from canon_pl.io import load_family, training_data
from canon_pl.io.family import hook_families
from canon_pl.lm import HookedLanguageModel, load_causal_lm, select_training_tokens
from canon_pl.sae import BatchTopKSettings
from canon_pl.training import (
    ActivationDataModule,
    MultiHookActivationDataModule,
    MultiHookFamilyModule,
    OptimizerSettings,
    SAEFamilyModule,
)
from canon_pl.viewer.runs import find_runs, member_metrics
from tests.helpers import REPO, make_trainer, run_cli

pytest.importorskip("gguf")
HOOKS = ["model.layers.1", "model.layers.3"]
DATA = dict(text="pydoc-topics", context_length=32, contexts_per_forward=4, block_contexts=8, batch_size=96,
            val_contexts=4)
FAMILY = dict(d_in=576, widths=[64, 128], sae=BatchTopKSettings(k=4), optimizer=OptimizerSettings(lr=1e-3))


@pytest.fixture(scope="module")
def hooked() -> HookedLanguageModel:
    return HookedLanguageModel(load_causal_lm("smollm2-135m"))


def test_one_forward_reads_every_hook_point_as_a_single_capture_does_and_stops_after_the_last(hooked) -> None:
    tokens = torch.randint(2, 1000, (2, 12))
    tokens[:, 0] = 1
    hook_points = ["model.layers.5", "model.layers.1.mlp", "blocks.3.hook_resid_pre", "model.layers.3"]
    ran = []
    handles = [block.register_forward_hook(lambda m, i, o, n=n: ran.append(n))
               for n, block in enumerate(hooked.model.model.layers)]
    try:
        many = hooked.capture_many(tokens, hook_points)
    finally:
        for handle in handles:
            handle.remove()
    assert list(many) == hook_points  # in the order asked, whatever order the forward reached them
    assert max(ran) == 5  # the blocks after the deepest hook point never ran
    for hook_point in hook_points:
        torch.testing.assert_close(many[hook_point], hooked.capture(tokens, hook_point), rtol=0, atol=0)


def test_batches_at_each_hook_point_equal_single_hook_captures_of_the_same_tokens(hooked) -> None:
    data = MultiHookActivationDataModule(hook_points=HOOKS, **DATA)
    data.hooked = hooked
    block = data.load_block(0)
    contexts = torch.stack([c for _, c in zip(range(DATA["block_contexts"]), data._contexts("train", 0))])
    single = {h: hooked.capture(contexts, h).float() for h in HOOKS}
    shared = select_training_tokens(single[HOOKS[0]]).mask & select_training_tokens(single[HOOKS[1]]).mask
    by_hook = data.split_by_hook(block)
    for hook_point in HOOKS:
        torch.testing.assert_close(by_hook[hook_point], single[hook_point][shared])
    # A shuffled training batch keeps each token's rows together across the hook points.
    batch = data.split_by_hook(next(data.train_batches([0, 0]))[1])
    rows = [(by_hook[HOOKS[0]] == row).all(dim=1).nonzero().item() for row in batch[HOOKS[0]][:10]]
    torch.testing.assert_close(batch[HOOKS[1]][:10], by_hook[HOOKS[1]][rows])


def test_each_hook_points_family_trains_exactly_as_its_own_single_hook_run(hooked, tmp_path: Path) -> None:
    """With a selection that cannot differ between hook points (no outlier cut), the multi-hook run's family at each
    hook point ends with the weights of a run of its own on that hook point: same batches, same updates."""
    data = MultiHookActivationDataModule(hook_points=HOOKS, outlier_factor=None, **DATA)
    data.hooked = hooked
    multi = MultiHookFamilyModule(hook_points=HOOKS, control_seeds=[1], **FAMILY)
    make_trainer(tmp_path / "multi", max_steps=3, limit_val_batches=0).fit(multi, data)
    for hook_point in HOOKS:
        alone_data = ActivationDataModule(hook_point=hook_point, outlier_factor=None, **DATA)
        alone_data.hooked = hooked
        alone = SAEFamilyModule(control_seeds=[1], **FAMILY)
        make_trainer(tmp_path / hook_point, max_steps=3, limit_val_batches=0).fit(alone, alone_data)
        mine = multi.family(hook_point)
        assert mine.settings.hook_point == hook_point and int(mine.tokens_trained) == 3 * DATA["batch_size"]
        for name, tensor in alone.state_dict().items():
            torch.testing.assert_close(mine.state_dict()[name], tensor, msg=f"{hook_point}: {name}")


def test_hook_points_that_do_not_match_the_data_or_repeat_are_refused(hooked, tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="more than once"):
        MultiHookActivationDataModule(hook_points=["model.layers.1", "model.layers.1"], **DATA)
    data = MultiHookActivationDataModule(hook_points=HOOKS, **DATA)
    data.hooked = hooked
    with pytest.raises(ValueError, match="same hook_points, in the same order"):
        make_trainer(tmp_path, max_steps=1).fit(MultiHookFamilyModule(hook_points=HOOKS[::-1], **FAMILY), data)
    with pytest.raises(SettingError, match="MultiHookFamilyModule"):  # a one-hook module on a multi-hook stream
        make_trainer(tmp_path, max_steps=1).fit(SAEFamilyModule(**FAMILY), data)
    assert not (tmp_path / "hooks.json").exists()


def test_a_multi_hook_run_from_the_command_line_exports_stitches_and_shows_a_family_per_hook_point(tmp_path) -> None:
    run = tmp_path / "run"
    small = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.log_every_n_steps", "1",
             "--trainer.default_root_dir", str(run), "--model.init_args.widths", "[64, 128]",
             "--model.init_args.sae.k", "4", "--model.init_args.hook_points", json.dumps(HOOKS),
             "--data.init_args.hook_points", json.dumps(HOOKS),
             *[f"--data.init_args.{key}={value}" for key, value in DATA.items()]]
    fit = run_cli("fit", "--config", str(REPO / "configs" / "family_smollm2_hooks.yaml"), *small, cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    families = hook_families(run)
    assert list(families) == HOOKS
    for hook_point, folder in families.items():
        family = load_family(folder)
        assert family.widths == [64, 128]
        assert {sae.cfg.hook_point for sae in family.saes.values()} == {hook_point}
        cfg = json.loads((folder / "128" / "cfg.json").read_text())
        assert training_data(folder / "128")["hook_point"] == hook_point and cfg["training"]["global_step"] == 4
    stitch = run_cli("stitch", str(run), "--data", "pydoc-topics", "--tokens", "256", cwd=tmp_path, script="canon-pl")
    assert stitch.returncode == 0, stitch.stderr[-3000:]
    for hook_point, folder in families.items():  # one pair per hook point, each inside its own family
        result = json.loads((folder / "stitching" / "64_128.json").read_text())
        assert result["small"]["source"].startswith(str(folder)) and result["large"]["hook_point"] == hook_point
    runs = {r.name: r for r in find_runs(tmp_path)}
    for hook_point in HOOKS:
        member = runs[f"run/{hook_point}/128"]
        assert member.family == f"run/{hook_point}" and member.row()["hook point"] == hook_point
        logged = member_metrics(member.path)  # the run's one log, this member's columns
        assert logged["val/explained_variance"].notna().any() and logged["val/ce_recovered"].notna().any()

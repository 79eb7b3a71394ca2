"""The known-answer world: the same seed gives the same activations, its planted kinds are what the spec says and
are recorded beside the data, and the truth classes a score is read against follow the rules stated in
canon_pl.calibration.truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from canon_pl.calibration.truth import (
    CLASS_NAMES,
    classification_scores,
    expected_shared,
    recovery,
    truth_classes,
    truth_identity,
)
from canon_pl.calibration.world_files import WorldFileError, read_world, world_of
from canon_pl.data.known_world import CHILD, COMPOSITE, PLAIN, KnownWorld, WorldSpec
from canon_pl.errors import SettingError
from tests.helpers import REPO, run_cli

SMALL = WorldSpec(d_in=64, n_plain=40, n_families=6, children_per_family=3, n_composite=20, n_components=10,
                  active_per_token=4.0)


def test_a_seed_gives_the_same_world_and_stream_and_another_seed_another() -> None:
    a, b = KnownWorld(SMALL), KnownWorld(SMALL)
    assert all(torch.equal(a.truth_tensors()[k], b.truth_tensors()[k]) for k in a.truth_tensors())
    assert torch.equal(a.batch(7, 256), b.batch(7, 256))
    assert not torch.equal(a.batch(7, 256), a.batch(8, 256))  # every batch new: unlimited unique samples
    assert not torch.equal(a.batch(0, 256), a.batch(-1, 256))  # held-out indices are another part of the stream
    other = KnownWorld(WorldSpec(**{**SMALL.to_dict(), "seed": 1}))
    assert not torch.equal(a.directions, other.directions)


def test_the_planted_structure_is_what_the_spec_says() -> None:
    world = KnownWorld(SMALL)
    assert world.directions.shape == (40 + 18 + 20, 64)
    assert torch.allclose(world.directions.norm(dim=-1), torch.ones(78), atol=1e-5)
    children = world.kind == CHILD
    assert int(children.sum()) == 18 and int((world.kind == PLAIN).sum()) == 40
    # each child leans on its family's parent at the stated cosine, and only on its own
    cos = world.directions[children] @ world.parents.T
    own = cos.gather(1, world.family[children][:, None]).squeeze(1)
    assert torch.allclose(own, torch.full_like(own, 0.8), atol=1e-5)
    # a composite is its shared directions plus a little of its own: 3 / (3 + 0.5^2) of its norm lies in their span
    composites = world.directions[world.kind == COMPOSITE]
    q = torch.linalg.qr(world.components.T)[0]
    in_span = (composites @ q).norm(dim=-1) ** 2
    assert in_span.min() > 0.85 and (world.composition[world.kind == COMPOSITE] > 0).sum(1).eq(3).all()
    # frequencies: a power law summing to the mean units per token; siblings share their family's
    assert world.frequency.sum() == pytest.approx(4.0, rel=1e-4)
    first_family = world.frequency[children][:3]
    assert torch.allclose(first_family, first_family[:1].expand(3))
    # the stream fires each feature about as often as its frequency says (Poisson draws, 64k tokens)
    active = world.active(0, 65_536)
    counts = torch.bincount(active.feature, minlength=world.n_features).float() / 65_536
    assert torch.allclose(counts, world.frequency, atol=0.01)
    x, truth = world.batch_with_truth(3, 32)
    rebuilt = torch.zeros(32, 64).index_add_(0, truth.token, truth.coefficient[:, None] * world.directions[truth.feature])
    assert torch.allclose(x, rebuilt, atol=1e-5)


def test_the_null_world_keeps_the_frequencies_and_plants_nothing() -> None:
    world, null = KnownWorld(SMALL), KnownWorld(SMALL.null())
    assert null.n_features == world.n_features and bool((null.kind == PLAIN).all())
    assert null.parents.shape[0] == 0 and float(null.composition.abs().sum()) == 0.0
    assert torch.equal(null.frequency, world.frequency) and torch.equal(null.magnitude, world.magnitude)
    assert (null.directions @ null.directions.T - torch.eye(null.n_features)).abs().max() < 0.6


@pytest.mark.parametrize("change, message", [
    ({"d_in": 0}, "world.d_in must be a whole number >= 1"),
    ({"children_per_family": 1}, "children_per_family"),
    ({"parent_cosine": 1.0}, "parent_cosine"),
    ({"active_per_token": 60.0}, "the most frequent unit would fire"),
    ({"n_composite": 200, "n_components": 5}, "raise world.n_components"),
])
def test_a_world_that_cannot_be_made_is_refused_naming_the_setting(change: dict, message: str) -> None:
    with pytest.raises(SettingError, match=message):
        KnownWorld(WorldSpec(**{**SMALL.to_dict(), **change}))


def test_truth_classes_follow_the_stated_rules() -> None:
    """S holds plain features 0-9, parent 0 and every shared direction; L holds plain 0-19, the children of families
    0 and 1, every composite and parent 2. Against S: plain 0-9 are reconstruction, 10-19 novel; family 0's children
    re-split S's parent (reconstruction), family 1's are new (novel); a composite whose every shared direction S holds
    is reconstruction; parent 2, of which S holds nothing, novel."""
    world = KnownWorld(SMALL)
    d = world.directions
    small = torch.cat([d[:10], world.parents[:1], world.components])
    large = torch.cat([d[:20], d[40:46], d[58:78], world.parents[2:3]])
    s_id, l_id = truth_identity(small, world), truth_identity(large, world)
    classes = [CLASS_NAMES[c] for c in truth_classes(s_id, l_id, world).tolist()]
    assert classes == ["reconstruction"] * 10 + ["novel"] * 10 + ["reconstruction"] * 3 + ["novel"] * 3 + \
        ["reconstruction"] * 20 + ["novel"]
    # a latent a little off its true direction is still it; one that is no true direction is unmatched
    noisy = F.normalize(large + 0.02 * torch.randn_like(large), dim=-1)
    assert torch.equal(truth_classes(s_id, truth_identity(noisy, world), world), truth_classes(s_id, l_id, world))
    random_rows = F.normalize(torch.randn(5, 64, generator=torch.Generator().manual_seed(12345)), dim=-1)
    assert set(truth_classes(s_id, truth_identity(random_rows, world), world).tolist()) == {3}  # unmatched
    held = recovery(l_id, world)
    assert held["by_kind"] == {"plain": 0.5, "child": pytest.approx(6 / 18), "composite": 1.0}
    assert expected_shared(s_id, l_id) == pytest.approx(10 / 21)  # S's plain 0-9 among its 21 true-direction latents
    # a perfect instrument scores 1, one that calls everything novel has the reconstruction recall 0
    truth = truth_classes(s_id, l_id, world)
    perfect = classification_scores(truth == 0, truth)
    assert perfect["novel"]["precision"] == perfect["novel"]["recall"] == perfect["reconstruction"]["recall"] == 1.0
    assert classification_scores(torch.ones_like(truth, dtype=torch.bool), truth)["reconstruction"]["recall"] == 0.0


def test_synth_writes_the_truth_and_a_cache_a_config_trains_on(tmp_path: Path) -> None:
    out = tmp_path / "world"
    made = run_cli("synth", "--out", str(out), "--world.d_in", "64", "--world.n_plain", "40", "--world.n_families", "6",
                   "--world.children_per_family", "3", "--world.n_composite", "20", "--world.n_components", "10",
                   "--world.active_per_token", "4", "--tokens", "8192", "--val_tokens", "4096", script="canon-pl",
                   cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    world = read_world(out)
    assert world.spec == SMALL and json.loads((out / "world.json").read_text())["features_by_kind"] == \
        {"plain": 40, "child": 18, "composite": 20}
    from canon_pl.data import ShardIndex

    index = ShardIndex.load(out)
    assert index.split_tokens("train") == 8192 and index.split_tokens("val") == 4096
    assert torch.allclose(index.read_shard(0)[:4096], world.batch(0, 4096))
    # a world file whose truth was edited is refused, naming what differs
    import safetensors.torch as st

    tensors = st.load_file(out / "world.safetensors")
    tensors["directions"][0] *= -1
    st.save_file(tensors, out / "world.safetensors")
    (out / "world.json").write_text(json.dumps({**json.loads((out / "world.json").read_text()), "arrays_sha256": None}))
    with pytest.raises(WorldFileError):
        read_world(out)
    refused = run_cli("synth", "--out", str(tmp_path / "bad"), "--world.n_families", "3",
                      "--world.children_per_family", "1", script="canon-pl", cwd=tmp_path)
    assert refused.returncode == 2 and "children_per_family" in refused.stderr and not (tmp_path / "bad").exists()


def test_the_shipped_known_world_config_trains_and_its_exports_name_their_world(tmp_path: Path) -> None:
    """`lightning fit --config configs/family_known_world.yaml`, shortened: every export records the world's spec,
    and the truth regenerated from it is the world the data module streamed."""
    run = run_cli("fit", "--config", str(REPO / "configs" / "family_known_world.yaml"), "--trainer.max_steps", "2",
                  "--trainer.enable_progress_bar", "false", "--model.init_args.widths", "[16, 32]",
                  "--model.init_args.base_width", "16", "--model.init_args.sae.k", "4",
                  "--data.init_args.batch_size", "256", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    export = tmp_path / "checkpoints" / "family_known_world" / "32_seed1"
    world = world_of(export)
    assert world is not None and world.spec == WorldSpec()  # the config states the defaults
    assert world_of(REPO / "configs") is None  # not an export: no world

"""Every instrument scored against a known answer: a test here fails when an instrument loses what the truth says.

The calibration family (configs/calibration_known_world.yaml) is trained on its planted world for 800 of its 2,000
steps (about 40 s on one core); the pass rules are canon_pl.calibration.score.PASS_RULES, the rules the report
quotes. The meta-SAE's power is read on true dictionaries, where the answer does not depend on training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from canon_pl.calibration.score import PASS_RULES, score_family, score_ideal_meta
from canon_pl.data.known_world import WorldSpec
from tests.helpers import REPO

CALIBRATION_CONFIG = REPO / "configs" / "calibration_known_world.yaml"


@pytest.fixture(scope="module")
def planted_family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from canon_pl.cli.lightning import run_lightning_cli

    torch.set_num_threads(1)  # small matrices: one thread, immune to a busy machine (the autouse fixture resets it)
    run = tmp_path_factory.mktemp("calibration") / "planted"
    run_lightning_cli(["fit", "--config", str(CALIBRATION_CONFIG), "--trainer.max_steps", "800",
                       "--trainer.default_root_dir", str(run)])
    return run


@pytest.fixture(scope="module")
def scored(planted_family: Path) -> dict:
    return score_family(planted_family, held_out_tokens=8192, meta_steps=20)


def test_stitching_calls_the_planted_novel_and_reconstruction_latents_and_groups_the_planted_families(
        scored: dict) -> None:
    assert scored["world"]["features_by_kind"] == {"plain": 32, "child": 32, "composite": 24}
    assert [(p["small"], p["large"]) for p in scored["pairs"]] == [(32, 64), (64, 128)]
    for pair in scored["pairs"]:
        definition = pair["definition"]
        # enough latents of both truth classes are scored for the precision and recall to mean something
        assert definition["n_scored"] >= 30 and definition["reconstruction"]["n_true"] >= 20
        assert pair["pass"]["definition"], definition  # precision >= 0.9, recall >= 0.8 of both calls
        assert pair["pass"]["consistency"], pair["consistency"]  # matched consistency within 5 points of the truth
        # where S holds a family's parent and L two or more of its children, stitching swaps them as one group
        assert pair["family_groups"]["grouped"] == pair["family_groups"]["families"]
        # the path walked on the planted units falls all the way (the truth's answer to the monotone-path claim),
        # and the granularity curve is monotone at groups no coarser than twice the planted units'
        assert pair["truth_path"]["monotone"] and pair["truth_path"]["kinds"]["swap"] >= 10, pair["truth_path"]
        assert pair["pass"]["granularity"], pair["granularity"]
    assert scored["truth_verdicts"]["monotone_path"] == scored["verdicts"]["monotone_path"] == "reproduced"
    first = scored["pairs"][0]
    assert first["truth_classes"]["novel"] >= 5 and first["definition"]["novel"]["n_true"] >= 5
    assert scored["members"]["128"]["by_kind"]["child"] > scored["members"]["32"]["by_kind"]["child"]


def test_probing_and_absorption_see_the_planted_hierarchies(scored: dict) -> None:
    """Where an SAE holds a family's parent, one latent probes the family and nothing is absorbed; where it split the
    family into children, the 1-sparse probe falls short of the k-sparse one and the child latents absorb the
    parent (HIERARCHY_RULES)."""
    from canon_pl.calibration.hierarchy import PARENT, SPLIT

    hierarchy = {h["width"]: h for h in scored["hierarchy"]}
    assert sorted(hierarchy) == [32, 64, 128]
    states = [h["by_state"] for h in hierarchy.values()]
    split = [state[SPLIT] for state in states if state[SPLIT]["families"] >= 2]
    held = [state[PARENT] for state in states if state[PARENT]["families"]]
    assert split and held  # both rules are exercised: some SAE split families, some holds a parent
    assert hierarchy[128]["by_state"][SPLIT]["families"] > hierarchy[32]["by_state"][SPLIT]["families"]
    for h in hierarchy.values():  # each rule holds wherever its state occurs
        assert h["pass"]["absorption"] is not False and h["pass"]["probing"] is not False, h["by_state"]
    assert all(state["absorption_rate"] <= 0.1 and state["probe_1"] >= 0.9 for state in held)
    assert all(state["absorption_rate"] >= 0.3 and state["probe_1"] < state["probe_4"] - 0.1 for state in split)


def test_the_meta_sae_sees_planted_composition_and_no_composition_in_the_null_world() -> None:
    """On the true dictionary of a world with 450 composite features (3 of 24 shared directions each) beside 150
    plain ones the meta-SAE beats its highest floor by the rule's margin and finds shared directions; on the null
    twin (the same frequencies, unrelated directions) it does not beat its floors."""
    torch.set_num_threads(1)
    spec = WorldSpec(d_in=128, n_plain=150, n_families=0, n_composite=450, n_components=24,
                     components_per_feature=3, active_per_token=4.0)
    scored = score_ideal_meta(spec, steps=300)
    planted, null = scored["planted"], scored["null"]
    assert planted["excess"] >= PASS_RULES["meta_excess_planted"] and planted["pass"]
    assert planted["verdict"] == planted["truth"] == "reproduced" and planted["components_recovered"] > 0.25
    assert null["excess"] < PASS_RULES["meta_excess_null"] and null["pass"]
    assert null["verdict"] == null["truth"] == "not reproduced"


def test_calibrate_refuses_a_config_that_does_not_train_on_a_known_world_before_any_work(tmp_path: Path) -> None:
    from tests.helpers import run_cli

    refused = run_cli("calibrate", "--config", str(REPO / "configs" / "sae_synthetic.yaml"), "--out",
                      str(tmp_path / "out"), cwd=tmp_path, script="canon-pl")
    assert refused.returncode == 2 and "KnownWorldDataModule" in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr and not (tmp_path / "out").exists()


def test_the_truths_groups_join_each_planted_unit_across_widths() -> None:
    """An S that holds every family's parent and an L that holds its children: the truth's groups put each parent
    with its children and each other true direction with itself, and leave a latent that is no true direction
    alone."""
    from canon_pl.calibration.truth import truth_group_edges, truth_identity
    from canon_pl.data.known_world import KnownWorld
    from canon_pl.stitching.groups import groups_from_edges

    world = KnownWorld(WorldSpec(d_in=64, n_plain=8, n_families=3, children_per_family=4, n_composite=2,
                                 n_components=4, components_per_feature=2, active_per_token=2.0))
    composite = torch.nonzero(world.kind == 2).flatten()
    parts = torch.nonzero(world.composition[composite[0]] > 0).flatten()
    stray = torch.randn(1, 64, generator=torch.Generator().manual_seed(123))  # no true direction (cosine < 0.9)
    small = torch.cat([world.parents, world.components[parts], world.directions[:2]])  # 3 parents, 2 parts, 2 plain
    large = torch.cat([world.directions[world.family >= 0], world.directions[composite[:1]], world.directions[:2],
                       stray])
    s_id, l_id = truth_identity(small, world), truth_identity(large, world)
    assert int((~l_id.matched).sum()) == 1
    groups = groups_from_edges(small.shape[0], large.shape[0], *truth_group_edges(s_id, l_id, world))
    for f in range(3):  # the parent of family f with its four children
        s_members, l_members = groups.members(int(groups.small_group[f]))
        assert s_members.tolist() == [f] and l_members.tolist() == list(range(4 * f, 4 * f + 4))
    # a composite is a unit of its own: S's two shared directions are removed, the composite inserted, apart
    assert groups.members(int(groups.large_group[12]))[0].numel() == 0
    assert groups.members(int(groups.small_group[3]))[1].numel() == 0
    assert groups.members(int(groups.small_group[5]))[1].tolist() == [13]  # a plain feature with itself
    assert groups.members(int(groups.large_group[15]))[0].numel() == 0  # the stray latent: novel, alone
    assert groups.kind_counts() == {"swap": 5, "novel": 2, "removal": 2}

"""k-sparse probing: labels the packaged reST text gives for free, a probe that finds a planted feature's latent (and
does no better than chance on an SAE that lacks it), and the latent that carries a probe traced to its class in the
family's stitching and to its partner in the other seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from canon_pl.lm.token_labels import code_characters, label_pieces
from canon_pl.metrics.probing import sparse_probes
from tests.test_stitching import orthonormal, tied_sae


def test_code_prose_keyword_and_number_labels_read_off_restructured_text() -> None:
    text = ("Use ``def f()`` and :func:`len` here::\n\n   for x in range(3):\n       pass\n\nProse 42.\n"
            ">>> import os\n.. note::\n\n   not code\n")
    code = code_characters(text)
    in_code = lambda fragment: bool(code[text.index(fragment)])  # noqa: E731
    assert in_code("def f") and in_code("len") and in_code("for x") and in_code("pass") and in_code("import")
    assert not in_code("Use") and not in_code("Prose") and not in_code("not code")  # a note is no literal block
    labels = label_pieces(["Use", " ``", "def", " f", "()``", " 42", "\n", ">>>", " import", " os", "\n", "x"])
    assert labels["code"] == [0, 1, 1, 1, 1, 0, -1, 1, 1, 1, -1, 0]
    # keywords against other identifiers, among code tokens only ("x" in prose is outside the task)
    assert labels["python_keyword"] == [-1, -1, 1, 0, -1, -1, -1, -1, 1, 0, -1, -1]
    assert labels["number"] == [0, 0, 0, 0, 0, 1, -1, 0, 0, 0, -1, 0]


def planted_task(n: int = 6000, feature: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse combinations of 8 orthonormal directions; the label says whether ``feature`` is present."""
    directions = orthonormal(8)
    g = torch.Generator().manual_seed(4)
    coef = torch.rand(n, 8, generator=g) * (torch.rand(n, 8, generator=g) < 0.2)
    return directions, coef @ directions, (coef[:, feature] > 0).to(torch.int8)


def test_a_probe_on_a_planted_feature_finds_its_latent_and_an_sae_without_it_does_not() -> None:
    directions, x, label = planted_task()
    sae = tied_sae(directions)
    found = sparse_probes(lambda b: sae.encode(b), x, {"planted": label}, ks=(1, 2))["planted"]
    assert found["top_latents"][0] == 5 and found["top_k_accuracy"]["1"] > 0.97
    # an SAE of the other 7 directions and a random one: no latent carries the feature alone
    others = tied_sae(directions[[0, 1, 2, 3, 4, 6, 7]])
    lacking = sparse_probes(lambda b: others.encode(b), x, {"planted": label}, ks=(1,))["planted"]
    assert lacking["top_k_accuracy"]["1"] < 0.7, lacking
    # a task with too few positives is skipped with the reason, not scored
    rare = torch.zeros_like(label)
    rare[:3] = 1
    assert "positive tokens" in sparse_probes(lambda b: sae.encode(b), x, {"rare": rare})["rare"]["skipped"]


def test_the_carrier_of_a_probe_has_its_stitching_class_and_its_seed_partner(tmp_path: Path) -> None:
    from canon_pl.cli import main
    from canon_pl.study.evaluate import nearest_rows, probe_carriers, saes_of
    from canon_pl.io import load_sae
    from canon_pl.stitching import latent_classes, read_stitching_results
    from tests.test_evaluate import small_family

    family = small_family(tmp_path)
    assert main(["stitch", str(family), "--data", str(tmp_path / "cache"), "--tokens", "400"]) == 0
    evaluated = saes_of(family)
    saes = {e.folder: load_sae(e.folder) for e in evaluated}
    member, control = family / "32", family / "32_seed1"
    (partner, cosine), = nearest_rows(saes[member].W_dec.detach(), saes[control].W_dec.detach(), [7])
    probes = {family / "16": {"t": {"top_latents": [3]}}, member: {"t": {"top_latents": [7, 1]}},
              control: {"t": {"top_latents": [partner]}}}
    carriers = probe_carriers(family, evaluated, saes, probes)
    stitched = read_stitching_results(family / "stitching" / "16_32.json", arrays=True)
    assert carriers[member]["t"]["class"] == latent_classes(stitched, stitched.pop("arrays"))["definition"][7]
    assert carriers[member]["t"]["seed_partner"] == {"sae": "32_seed1", "latent": partner,
                                                     "cosine": pytest.approx(cosine), "is_its_best_latent": True}
    assert carriers[family / "16"]["t"] == {"latent": 3, "class": None, "seed_partner": None}  # narrowest, one seed
    assert carriers[control]["t"]["class"] is None and carriers[control]["t"]["seed_partner"]["sae"] == "32"


def planted_absorber(absorbing: bool):
    """Two parent families of three children each (:class:`PlantedHierarchyActivations`) and a ReLU SAE with a
    latent for parent 0 and one for parent 1; with ``absorbing`` the parent-0 latent is silent on child 0, whose own
    latent fires there instead and carries the parent's direction: absorption by construction, 1 time in 3."""
    import torch.nn.functional as F

    from canon_pl.data.synthetic import PlantedHierarchyActivations
    from canon_pl.sae import SAEConfig, build_sae

    h = PlantedHierarchyActivations(d_in=32, n_parents=2, children_per_parent=3, n_novel=0, parent_probability=0.3)
    parent, child = h.parents[0], h.children[0, 0]
    split = F.normalize(child - (child @ parent) * parent, dim=0)
    sae = build_sae(SAEConfig(d_in=32, d_sae=3, architecture="relu"))
    with torch.no_grad():
        sae.W_dec.copy_(torch.stack([parent, child, h.parents[1]]))
        # the child's latent reads child 0's coefficient exactly (its encoder scaled to its decoder row)
        sae.W_enc.copy_(torch.stack([parent - 2 * split if absorbing else parent, split / (child @ split),
                                     h.parents[1]]).T)
        sae.b_enc.fill_(-1e-3)  # silent on float noise along a direction no feature of the token uses
        sae.b_dec.zero_()
    x = h.batch(0, 12000)
    return sae.eval(), x, (x @ parent > 1e-4).to(torch.int8)


@pytest.mark.parametrize("absorbing, rate", [(True, 1 / 3), (False, 0.0)])
def test_a_planted_absorber_gives_the_planted_absorption_rate(absorbing: bool, rate: float) -> None:
    from canon_pl.metrics.absorption import absorption, label_direction

    sae, x, label = planted_absorber(absorbing)
    main = sparse_probes(lambda b: sae.encode(b), x, {"parent": label}, ks=(1,))["parent"]["top_latents"][0]
    assert main == 0  # the parent's latent carries the 1-sparse probe even when it misses a third of its tokens
    found = absorption(lambda b: sae.encode(b), sae.W_dec, x, label, main, label_direction(x, label))
    assert found["absorption_rate"] == pytest.approx(rate, abs=0.04) and found["n_positive"] > 300
    # without absorption the child's latent still fires on child 0, beside the parent's: no false negative
    assert found["false_negative_rate"] == pytest.approx(rate, abs=0.04)

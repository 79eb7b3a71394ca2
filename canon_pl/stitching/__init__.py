"""SAE stitching (docs/design.md 1.2): novel vs reconstruction latents, groups, the stitched SAE and the path.

Pure torch: usable in a notebook without Lightning. ``StitchingCallback`` (canon_pl.training) and
``canon-pl stitch`` wrap :func:`analyze_pair`.
"""

from canon_pl.stitching.analysis import (
    SETTINGS,
    StitchingResult,
    analyze_pair,
    check_pair,
    proxy_agreement,
    latent_classes,
    read_stitching_results,
    settings_mismatch,
    spliced_loss_on,
    write_stitching_results,
)
from canon_pl.stitching.groups import LatentGroups, connected_components, latent_groups
from canon_pl.metrics.matching import (
    DEFAULT_TAU,
    LatentMatch,
    StitchingError,
    check_tau,
    decoder_cosine_matrix,
    match_latents,
)
from canon_pl.stitching.path import (
    SparseCodes,
    StitchingPath,
    single_insertion_changes,
    single_insertion_delta_mse,
    sparse_codes,
    stitching_path,
)
from canon_pl.stitching.stitched import StitchedSAE, check_stitchable

__all__ = [
    "DEFAULT_TAU",
    "SETTINGS",
    "LatentGroups",
    "LatentMatch",
    "SparseCodes",
    "StitchedSAE",
    "StitchingError",
    "StitchingPath",
    "StitchingResult",
    "analyze_pair",
    "check_pair",
    "check_tau",
    "connected_components",
    "decoder_cosine_matrix",
    "latent_groups",
    "check_stitchable",
    "match_latents",
    "proxy_agreement",
    "latent_classes",
    "read_stitching_results",
    "settings_mismatch",
    "single_insertion_changes",
    "single_insertion_delta_mse",
    "spliced_loss_on",
    "sparse_codes",
    "stitching_path",
    "write_stitching_results",
]

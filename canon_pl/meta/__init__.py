"""Meta-SAEs (docs/design.md 1.3): SAEs trained on another SAE's decoder rows, and what they say about its latents.

Pure torch; ``MetaSAEModule``, ``DecoderRowsDataModule`` and ``canon-pl meta-sae`` (canon_pl.training / commands)
wrap it.
"""

from canon_pl.meta.analysis import (
    MetaAnalysis,
    analyze_meta_sae,
    floor_text,
    higher_floor,
    meta_width_sweep,
    read_meta_analysis,
    write_meta_analysis,
)
from canon_pl.meta.decomposition import (
    MetaDecomposition,
    MetaSAEError,
    check_meta_width,
    decoder_rows,
    decompose,
    fit_meta_sae,
    fraction_of_variance_explained,
    pca_variance_fraction,
    random_unit_rows,
    covariance_matched_rows,
    pca_shuffled_rows,
    refit_encoder,
    sample_rows,
    with_decoder,
)

__all__ = [
    "MetaAnalysis",
    "MetaDecomposition",
    "MetaSAEError",
    "analyze_meta_sae",
    "check_meta_width",
    "decompose",
    "fit_meta_sae",
    "floor_text",
    "higher_floor",
    "pca_variance_fraction",
    "random_unit_rows",
    "covariance_matched_rows",
    "pca_shuffled_rows",
    "decoder_rows",
    "fraction_of_variance_explained",
    "meta_width_sweep",
    "read_meta_analysis",
    "refit_encoder",
    "sample_rows",
    "with_decoder",
    "write_meta_analysis",
]

"""``canon-pl export --ckpt FILE --out DIR``: portable export of an ``SAEModule`` checkpoint."""

from __future__ import annotations


DESCRIPTION = """Turn a Lightning checkpoint of an SAEModule into a portable export (sae.safetensors + cfg.json, the
activation scale folded in), read by canon_pl.load_sae and every canon-pl command."""


def export(*, ckpt: str, out: str) -> int:
    """Write the portable export of a checkpoint.

    Args:
        ckpt: Lightning .ckpt written by SAEModule
        out: folder for sae.safetensors + cfg.json
    """
    from canon_pl.checks import check_output_folder
    from canon_pl.io import export_sae, load_sae

    check_output_folder(out)
    sae = load_sae(ckpt)  # activation scale already folded in
    export_sae(sae, out)
    print(f"exported {ckpt} to {out}")
    return 0


__all__ = ["export"]

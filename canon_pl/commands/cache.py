"""``canon-pl cache --config CFG --out DIR --tokens N``: write the config's activation stream to disk shards."""

from __future__ import annotations

from typing import Literal

from canon_pl.errors import SettingError

DESCRIPTION = """Capture the activation stream of a fit config (its ActivationDataModule: model, hook point, text,
token selection) into safetensors shards plus index.json, with a held-out part from held-out documents. Train on it
with data.class_path: canon_pl.training.ActivationShardDataModule. The cache is written in pieces of
--piece_documents documents: the same command on the same folder goes on where a killed or shorter run stopped,
without tokenising the documents already cached."""


def cache(*, config: str, out: str, tokens: int, val_tokens: int = 131_072,
          dtype: Literal["float16", "bfloat16", "float32"] = "float16", device: str | None = None,
          piece_documents: int | None = None, text: str | None = None) -> int:
    """Write a config's activation stream to disk shards.

    Args:
        config: a fit config whose data is an ActivationDataModule
        out: folder for the shards and index.json
        tokens: number of activation vectors to write
        val_tokens: activations of held-out documents to write as the cache's held-out part, read by validation,
            canon-pl stitch --data and canon-pl meta-sae --data (0 = none)
        dtype: dtype of the stored activations
        device: where the LM runs (default: cuda when a GPU is present, else cpu)
        piece_documents: training documents per resumable piece (default 2,000: about 1M tokens of the bundled
            documentation); a cache is continued only with the piece size it was written with
        text: the text to capture instead of the config's data.init_args.text (python-docs, linux-docs, docs, a
            local path, ...)
    """
    from canon_pl.checks import check_counts, check_device, check_output_folder

    check_counts(**{"--tokens": tokens})
    check_counts(0, **{"--val_tokens": val_tokens})
    if piece_documents is not None:
        check_counts(**{"--piece_documents": piece_documents})
    check_output_folder(out)
    device = check_device(device)  # None: the GPU when there is one
    from canon_pl.cli.lightning import run_lightning_cli
    from canon_pl.training import ActivationDataModule
    from canon_pl.training.cache import PIECE_DOCUMENTS, write_activation_cache

    from canon_pl.io.lock import RunFolderLock

    overrides = ["--data.init_args.text", text] if text is not None else []
    data = run_lightning_cli(["--config", config, *overrides], run=False).datamodule
    if not isinstance(data, ActivationDataModule):
        raise SettingError(f"{config} does not use ActivationDataModule")
    lock = RunFolderLock(out, fix="choose another --out or wait for that writer",
                         what="two cache writers in one folder delete each other's shards")
    lock.acquire()  # one writer per cache folder
    try:
        index = write_activation_cache(data, out, tokens, dtype, val_tokens=val_tokens,
                                       device=device,
                                       piece_documents=piece_documents or PIECE_DOCUMENTS)
    finally:
        lock.release()
    print(f"wrote {index.split_tokens('train')} training and {index.split_tokens('val')} held-out activations "
          f"({len(index.shards)} shards) to {out}; train on them with "
          f"data.class_path: canon_pl.training.ActivationShardDataModule, data.init_args.path: {out}")
    return 0


__all__ = ["cache"]

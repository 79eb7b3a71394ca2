"""``canon-pl synth --out DIR``: write a known-answer world's truth, and optionally its activations as a cache."""

from __future__ import annotations

from typing import Literal

from canon_pl.data.world_spec import WorldSpec

DESCRIPTION = """Write a known-answer world (canon_pl.data.known_world): world.json and world.safetensors (every true
direction with its planted kind: plain, child of a family, composite of shared directions; frequencies and magnitudes)
and, with --tokens, its activations as an activation cache that any config trains on (data.class_path:
canon_pl.training.ActivationShardDataModule). A config can also stream the world directly, unlimited and never
repeated: data.class_path: canon_pl.training.KnownWorldDataModule."""


def synth(*, out: str, world: WorldSpec = WorldSpec(), null: bool = False, tokens: int = 0,
          val_tokens: int = 16_384, dtype: Literal["float16", "bfloat16", "float32"] = "float32") -> int:
    """Write a known-answer world's truth (and activations).

    Args:
        out: folder for world.json, world.safetensors and (with --tokens) the cache's shards and index.json
        world: the world's settings (--world.d_in 576 --world.n_families 192 ...; WorldSpec's fields)
        null: write the world's null twin instead: as many features, the same frequencies, all plain
        tokens: training activations to write as a cache (0 = the truth only)
        val_tokens: held-out activations (from a part of the stream training never reads)
        dtype: dtype of the stored activations
    """
    from canon_pl.calibration.world_files import write_world
    from canon_pl.checks import check_counts, check_output_folder
    from canon_pl.data import write_activation_shards
    from canon_pl.data.known_world import KnownWorld

    check_output_folder(out)
    check_counts(0, **{"--tokens": tokens, "--val_tokens": val_tokens})
    spec = WorldSpec.from_value(world)
    made = KnownWorld(spec.null() if null else spec)
    path = write_world(made, out)
    message = f"wrote the world's truth ({made.n_features} features) to {path}"
    if tokens:
        batch = 4096

        def batches(sign: int, n: int):  # training reads indices 0, 1, ...; held-out ones -1, -2, ...
            for i in range(0, n, batch):
                yield made.batch(i // batch if sign > 0 else -1 - i // batch, min(batch, n - i))

        index = write_activation_shards(batches(1, tokens), out, dtype=dtype,
                                        metadata={"known_world": made.spec.to_dict()},
                                        val_batches=batches(-1, val_tokens) if val_tokens else None)
        message += (f" and {index.split_tokens('train')} training and {index.split_tokens('val')} held-out activations;"
                    f" train on them with data.class_path: canon_pl.training.ActivationShardDataModule, "
                    f"data.init_args.path: {out}")
    print(message)
    return 0


__all__ = ["synth"]

"""DataModules that stream ``[batch, d_in]`` activation batches, resumable at the exact batch.

Training streams are infinite (``Trainer.max_steps`` sets the length). Each DataModule counts the training
batches it has handed to the model and stores that position in the Lightning checkpoint, so a resumed run
continues with the next batch: no batch repeated or skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from canon_pl.checks import check_counts
from canon_pl.data import (
    PlantedHierarchyActivations,
    ShardError,
    ShardIndex,
    SyntheticSparseActivations,
    iterate_shard_batches,
)
from canon_pl.data.known_world import KnownWorld, WorldSpec
from canon_pl.data.shards import INDEX_FILE
from canon_pl.distributed import all_gather_objects, all_ranks_agree, world
from canon_pl.errors import CanonError


class _BatchStream(IterableDataset):
    """An iterable over ready-made batches produced by ``make_iterator()``."""

    def __init__(self, make_iterator: Callable[[], Iterator[Tensor]]) -> None:
        self.make_iterator = make_iterator

    def __iter__(self) -> Iterator[Tensor]:
        return self.make_iterator()


def _loader(make_iterator: Callable[[], Iterator[Tensor]]) -> DataLoader:
    return DataLoader(_BatchStream(make_iterator), batch_size=None, num_workers=0)


class StreamResumeError(CanonError, ValueError):
    """A checkpoint's stream positions that do not fit this run (another number of ranks)."""


class ResumableStreamDataModule(L.LightningDataModule):
    """Base: remembers the stream position after the last batch the model consumed, and restarts there.

    Subclasses implement :meth:`train_batches`, yielding ``(position_after, batch)``; the position is any value
    made of plain Python types (it is stored in the Lightning checkpoint and read back with ``weights_only=True``).
    Positions of prefetched batches wait in a queue until the batch really reaches the model.

    Under DDP every rank reads its own part of the data, so each rank has its own position: the checkpoint holds
    all of them (gathered from every rank when it is written) and each rank resumes from its own. Ranks stop
    together: when one rank's stream ends, every rank ends its epoch (a collective per batch; none alone).
    """

    def __init__(self) -> None:
        super().__init__()
        self.resume_position: Any = self.initial_position()
        self.train_batches_consumed = 0
        self._in_flight: deque[Any] = deque()

    @property
    def d_in(self) -> int:
        raise NotImplementedError

    def initial_position(self) -> Any:
        return 0

    def provenance(self) -> dict[str, Any]:
        """How the activations were made, as far as this DataModule knows (``ActivationDataModule.provenance``'s
        keys; empty for synthetic data). The SAE module checks the model and hook point against its own before
        training and writes the whole into every export."""
        return {}

    def train_batches(self, start: Any) -> Iterator[tuple[Any, Tensor]]:
        """``(position_after, batch [batch_size, d_in])`` pairs from position ``start`` onwards (this rank's part)."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        start = self.resume_position
        self._in_flight.clear()

        def batches() -> Iterator[Tensor]:
            stream = self.train_batches(start)
            while True:
                item = next(stream, None)
                device = item[1].device if item is not None else None
                if not all_ranks_agree(item is not None, device):  # this rank's stream or another's ended
                    return
                self._in_flight.append(item[0])
                yield item[1]

        return _loader(batches)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and self._in_flight:
            self.resume_position = self._in_flight.popleft()
            self.train_batches_consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Every rank's position (a collective under DDP: Lightning calls this on every rank when it checkpoints)."""
        positions = all_gather_objects(self.resume_position)
        return {"positions": positions, "world_size": len(positions), "train_batches_consumed": self.train_batches_consumed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        positions = state_dict["positions"] if "positions" in state_dict else [state_dict["position"]]
        rank, size = world()
        if len(positions) != size:
            raise StreamResumeError(
                f"the checkpoint was written by {len(positions)} rank(s), each reading its own part of the data, but "
                f"this run has {size}; resume with the same number of devices (trainer.devices x num_nodes = "
                f"{len(positions)}) or start a new run from the export"
            )
        self.resume_position = positions[rank]
        self.train_batches_consumed = int(state_dict["train_batches_consumed"])


class _SyntheticStreamDataModule(ResumableStreamDataModule):
    """Base of the synthetic DataModules: batches of a seeded ``source`` (anything with ``d_in`` and
    ``batch(index, batch_size) -> [batch_size, d_in]``), validation from negative, never-trained indices."""

    source: Any

    def _check_sizes(self, batch_size: int, val_batches: int) -> None:
        check_counts(batch_size=batch_size)
        check_counts(0, val_batches=val_batches)

    @property
    def d_in(self) -> int:
        return self.source.d_in

    def train_batches(self, start: int) -> Iterator[tuple[int, Tensor]]:
        """Batch ``i`` of the stream; under DDP each rank takes its slice of the global batch ``i`` of
        ``batch_size x world_size`` tokens, so the ranks together see what one process would with that batch size."""
        index = start
        while True:
            yield index + 1, self._rank_slice(index)
            index += 1

    def _rank_slice(self, index: int) -> Tensor:
        rank, size = world()
        bs = self.hparams.batch_size
        return self.source.batch(index, bs * size)[rank * bs:(rank + 1) * bs]

    def val_dataloader(self) -> DataLoader:
        # Validation draws from negative indices: never part of the training stream.
        return _loader(lambda: (self._rank_slice(-1 - i) for i in range(self.hparams.val_batches)))


class SyntheticActivationDataModule(_SyntheticStreamDataModule):
    """Sparse non-negative combinations of a known dictionary plus noise (see ``SyntheticSparseActivations``)."""

    def __init__(
        self,
        d_in: int = 64,
        n_features: int = 256,
        active_per_token: float = 4.0,
        noise_std: float = 0.01,
        batch_size: int = 1024,
        val_batches: int = 4,
        seed: int = 0,
    ) -> None:
        """
        Args:
            d_in: Width of the activations.
            n_features: Number of true directions.
            active_per_token: Mean number of true directions active in a token.
            noise_std: Standard deviation of the Gaussian noise added to every coordinate.
            batch_size: Tokens per batch on each rank (the global batch under DDP is this x the ranks).
            val_batches: Held-out batches for validation (drawn from a disjoint part of the stream).
            seed: Seed of the dictionary and of the stream.
        """
        super().__init__()
        self.save_hyperparameters()
        self._check_sizes(batch_size, val_batches)
        self.source = SyntheticSparseActivations(d_in, n_features, active_per_token, noise_std, seed=seed)


class PlantedHierarchyDataModule(_SyntheticStreamDataModule):
    """Activations with a planted hierarchy (parents that split into children, plus rare novel features; see
    ``PlantedHierarchyActivations``): train a small family on it to see stitching find what was planted."""

    def __init__(
        self,
        d_in: int = 32,
        n_parents: int = 6,
        children_per_parent: int = 2,
        n_novel: int = 4,
        parent_probability: float = 0.15,
        novel_probability: float = 0.03,
        split_strength: float = 0.6,
        noise_std: float = 0.0,
        batch_size: int = 1024,
        val_batches: int = 4,
        seed: int = 0,
    ) -> None:
        """
        Args:
            d_in: Width of the activations (at least ``n_parents * (1 + children_per_parent) + n_novel``).
            n_parents: Parent features (what a narrow SAE learns).
            children_per_parent: Children each parent splits into (what a wide SAE learns instead).
            n_novel: Rare features only a wide SAE affords.
            parent_probability: Probability that a token uses a parent family (through one child).
            novel_probability: Probability that a token uses each novel feature.
            split_strength: How far each child leans away from its parent (cosine ``1 / sqrt(1 + s^2)``).
            noise_std: Gaussian noise on every coordinate.
            batch_size: Tokens per batch on each rank.
            val_batches: Held-out batches for validation.
            seed: Seed of the directions and of the stream.
        """
        super().__init__()
        self.save_hyperparameters()
        self._check_sizes(batch_size, val_batches)
        self.source = PlantedHierarchyActivations(d_in, n_parents, children_per_parent, n_novel, parent_probability,
                                                  novel_probability, split_strength, noise_std, seed)


class KnownWorldDataModule(_SyntheticStreamDataModule):
    """A known-answer world (``canon_pl.data.known_world``): activations from a ground-truth dictionary with planted
    hierarchies, rare features and composite features (or none: ``world.n_families: 0, n_composite: 0``), unlimited
    unique batches. Every export of a run records the world's spec, from which the truth is regenerated."""

    def __init__(self, world: WorldSpec = WorldSpec(), batch_size: int = 4096, val_batches: int = 4) -> None:
        """
        Args:
            world: The world's settings (``WorldSpec``'s fields: d_in, n_plain, n_families, ...).
            batch_size: Tokens per batch on each rank.
            val_batches: Held-out batches for validation (drawn from a disjoint part of the stream).
        """
        super().__init__()
        self.save_hyperparameters()
        self._check_sizes(batch_size, val_batches)
        self.source = KnownWorld(world)
        self.hparams["world"] = self.source.spec.to_dict()  # plain values in checkpoints (weights_only loads)

    def provenance(self) -> dict[str, Any]:
        """The world's spec, recorded in every export: :func:`canon_pl.data.known_world.world_of` reads it back."""
        return {"known_world": self.source.spec.to_dict()}


class ActivationShardDataModule(ResumableStreamDataModule):
    """Activations cached on disk as safetensors shards (``canon_pl.data.write_activation_shards``)."""

    def __init__(
        self,
        path: str,
        batch_size: int = 4096,
        val_path: str | None = None,
        shards_in_memory: int = 4,
        seed: int = 0,
        verify_checksums: bool = True,
        expect: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            path: Folder with ``index.json`` and the shards.
            batch_size: Tokens per batch on each rank (the global batch under DDP is this x the ranks).
            val_path: Separate cache for validation; ``None`` = the cache's own held-out shards (``canon-pl cache``
                writes them from held-out documents; an unmarked cache holds out its last shard when it has several).
            shards_in_memory: Shards loaded and shuffled together.
            seed: Shuffling seed.
            verify_checksums: Check every shard against its SHA-256 in the index when it is read.
            expect: Metadata the cache must have been written with (for example ``{hook_point: model.layers.6,
                model: smollm2-135m}``); a mismatch is an error before training starts.
        """
        super().__init__()
        self.save_hyperparameters()
        check_counts(batch_size=batch_size, shards_in_memory=shards_in_memory)
        self._index: ShardIndex | None = None
        if (Path(path) / INDEX_FILE).is_file():
            self.index  # noqa: B018 - an existing cache is checked now; a missing one when first used (setup)

    @property
    def index(self) -> ShardIndex:
        """The cache's index, read and checked at construction when the cache exists, else on first use (so a
        config can name the cache an earlier stage of a pipeline writes); ``setup`` opens it before training."""
        if self._index is None:
            self._index = self._open()
        return self._index

    def _open(self) -> ShardIndex:
        hp = self.hparams
        index = ShardIndex.load(hp.path)
        for key, value in (hp.expect or {}).items():
            found = index.metadata.get(key)
            if found != value:
                raise ShardError(
                    f"the activation cache at {hp.path} was written with {key}={found!r} but this run expects "
                    f"{key}={value!r}; rebuild the cache (canon-pl cache) or fix the config"
                )
        self.val_index = ShardIndex.load(hp.val_path) if hp.val_path else None
        if self.val_index is not None and self.val_index.d_in != index.d_in:
            raise ShardError(f"val_path has d_in={self.val_index.d_in} but path has d_in={index.d_in}")
        if self.val_index is None:
            self.train_ids, self.val_ids = index.split_ids("train"), index.split_ids("val")
        else:
            self.train_ids, self.val_ids = list(range(len(index.shards))), []
        if sum(int(index.shards[i]["n_tokens"]) for i in self.train_ids) < hp.batch_size:
            raise ShardError(f"the cache at {hp.path} has fewer training tokens than one batch of {hp.batch_size}; "
                             f"lower batch_size")
        return index

    def setup(self, stage: str) -> None:
        self.index  # noqa: B018 - a missing or mismatched cache fails here, before training

    def provenance(self) -> dict[str, Any]:
        """What the cache's index records of how it was captured (``canon-pl cache`` writes it all)."""
        from canon_pl.lm.source import PROVENANCE_KEYS

        return {key: self.index.metadata[key] for key in PROVENANCE_KEYS if key in self.index.metadata}

    @property
    def d_in(self) -> int:
        return self.index.d_in

    def train_batches(self, start: int) -> Iterator[tuple[int, Tensor]]:
        """Shuffled batches of this rank's shards: under DDP rank ``r`` of ``W`` reads training shards ``r, r + W,
        ...`` (disjoint), so no two ranks read the same tokens."""
        hp = self.hparams
        self.index  # noqa: B018 - opened and checked on first use
        rank, size = world()
        if len(self.train_ids) < size:
            raise ShardError(
                f"the cache at {hp.path} has {len(self.train_ids)} training shard(s) but the run has {size} ranks, "
                f"each reading its own shards; rebuild the cache with more, smaller shards (canon-pl cache) or "
                f"train on fewer devices"
            )
        shard_ids = self.train_ids[rank::size]
        batches = iterate_shard_batches(self.index, shard_ids, hp.batch_size, hp.seed + rank, hp.shards_in_memory, start)
        return enumerate(batches, start=start + 1)

    def val_dataloader(self) -> DataLoader | list:
        self.index  # noqa: B018 - opened and checked on first use
        index, ids = (self.val_index, list(range(len(self.val_index.shards)))) if self.val_index else (self.index, self.val_ids)
        rank, size = world()
        ids = ids[rank::size] if len(ids) >= size else ids  # one shard for everyone: each rank measures it all
        if not ids:
            return []
        bs = self.hparams.batch_size

        def batches() -> Iterator[Tensor]:
            for i in ids:
                acts = index.read_shard(i, verify=self.hparams.verify_checksums)
                yield from acts.split(bs)

        return _loader(batches)

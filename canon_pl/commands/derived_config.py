"""Fit configs derived from a shipped one (the Matryoshka beside a family, the training ladder): the same data,
model and settings, trained into another run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from canon_pl.io.layout import RunLayout


def move_run_folder(config: dict[str, Any], root: str | Path) -> dict[str, Any]:
    """``config`` (parsed fit YAML, changed in place and returned) training into ``root``: ``default_root_dir``, and
    the checkpoints and logs that a config places by hand (``dirpath``, ``save_dir``) follow it, so a derived run
    never writes into the run it was derived from."""
    layout = RunLayout(Path(root))
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(layout.root)
    for callback in trainer.get("callbacks") or []:
        if "dirpath" in (callback.get("init_args") or {}):
            callback["init_args"]["dirpath"] = str(layout.checkpoints)
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and "save_dir" in (logger.get("init_args") or {}):
            logger["init_args"]["save_dir"] = str(layout.root)
    return config


def resume_arguments(run: str | Path) -> list[str]:
    """``["--ckpt_path", <newest whole checkpoint>]`` for a ``lightning fit`` into ``run`` that was interrupted
    (printed), or ``[]`` for a fresh one."""
    from canon_pl.io.checkpoint import newest_checkpoint

    newest = newest_checkpoint(run)
    if newest is None:
        return []
    print(f"  resuming from {newest}", flush=True)
    return ["--ckpt_path", str(newest)]


def drop_callback(config: dict[str, Any], class_name: str) -> dict[str, Any]:
    """``config`` (changed in place and returned) without the callbacks whose class is ``class_name``."""
    trainer = config.setdefault("trainer", {})
    trainer["callbacks"] = [c for c in trainer.get("callbacks") or []
                            if not str(c.get("class_path", "")).endswith(class_name)]
    return config


__all__ = ["drop_callback", "move_run_folder", "resume_arguments"]

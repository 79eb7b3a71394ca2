"""Subcommands of ``canon-pl`` beyond LightningCLI's (each module holds one, with its argument parser)."""

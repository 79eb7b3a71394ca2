"""The canon-pl version, recorded in every file it writes (a leaf module: the writers import it without the package)."""

__version__ = "0.1.0"

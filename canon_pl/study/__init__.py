"""The study: its stages (:mod:`canon_pl.study.stages`), which ``canon-pl pipeline`` and ``canon-pl ladder`` run."""

"""The study: its stages (:mod:`canon_pl.study.stages`, which ``canon-pl pipeline`` and ``canon-pl ladder`` run), the
report and the rules behind its verdicts (:mod:`~canon_pl.study.report`, :mod:`~canon_pl.study.verdicts`), each
stage's recorded time (:mod:`~canon_pl.study.stage_times`), the committed results it reads (the ladders' rungs and
bases, :mod:`~canon_pl.study.ladder_results` and :mod:`~canon_pl.study.ladder_report`; the Matryoshka comparison,
:mod:`~canon_pl.study.matryoshka_results`)."""

"""Calibration: known-answer worlds and every instrument scored against their truth (issue 52).

``canon_pl.data.known_world`` generates the worlds; :mod:`canon_pl.calibration.truth` says what a trained SAE holds
of a world's truth and scores the instruments; :mod:`canon_pl.calibration.world_files` writes and reads a world's
truth beside its data.
"""

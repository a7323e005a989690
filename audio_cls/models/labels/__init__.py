"""Label names of published weights, shipped as small CSV files (no download needed).

``audioset.csv``: the 527 AudioSet classes in the index order of ``class_labels_indices.csv``
(Gemmeke et al. 2017; ontology by Google, CC BY 4.0), the outputs of AudioSet-trained
checkpoints such as ESResNeXt-fbsp's.
"""

from __future__ import annotations

import csv
import functools
from importlib import resources

__all__ = ["audioset_labels"]


@functools.cache
def audioset_labels() -> tuple[str, ...]:
    """The 527 AudioSet display names, by output index."""
    with resources.files(__package__).joinpath("audioset.csv").open(newline="") as f:
        return tuple(row["display_name"] for row in csv.DictReader(f))

"""Map a site's own class names onto the federation's class list."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from endofed.shared.data.sample import SiteIndex

log = logging.getLogger(__name__)


class ClassMismatchError(ValueError):
    """A site has lesion classes the federation does not know."""


def harmonize_labels(index: SiteIndex, run_class_names: Sequence[str]) -> SiteIndex:
    """Relabel ``index`` so label ``i + 1`` means ``run_class_names[i]``.

    With a single run class every lesion maps to it (lesion-vs-normal task, e.g. a
    site labelling its boxes "polyp" in a run whose class is "lesion"). Otherwise every
    site class must appear in ``run_class_names``.
    """
    run_names = list(run_class_names)
    site_names = list(index.class_names)
    if site_names == run_names:
        return index
    if len(run_names) == 1:
        mapping = {i + 1: 1 for i in range(len(site_names))}
    else:
        unknown = sorted(set(site_names) - set(run_names))
        if unknown:
            raise ClassMismatchError(
                f"{index.root}: classes {unknown} are not in the run's class-names "
                f"{run_names}; add them to 'class-names' in the run config"
            )
        mapping = {i + 1: run_names.index(n) + 1 for i, n in enumerate(site_names)}
    records = []
    for r in index.records:
        labels = np.asarray([mapping[int(x)] for x in r.labels], dtype=np.int64)
        records.append(dataclasses.replace(r, labels=labels))
    if site_names:
        log.info("%s: classes %s mapped onto run classes %s", index.root, site_names, run_names)
    return dataclasses.replace(index, records=records, class_names=run_names)

"""Deterministic, patient-grouped train/val(/test) splits."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from .sample import SampleRecord, image_label

log = logging.getLogger(__name__)

SPLIT_NAMES = {2: ("train", "val"), 3: ("train", "val", "test")}


def split_records(
    records: Sequence[SampleRecord],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    stratify: bool = True,
    honour_manifest: bool = True,
) -> dict[str, list[SampleRecord]]:
    """Split records into ``train``/``val`` (2 fractions) or ``train``/``val``/``test``.

    * Grouped: all records sharing a :attr:`SampleRecord.group_id` (patient, else
      lesion, else the image) go to the same side.
    * Honours ``meta.split`` (e.g. a manifest ``split`` column) when
      ``honour_manifest``: such a group goes to its given side; the remaining
      groups fill the sides up to the requested fractions of the whole set.
    * Stratified by the group's majority image label (0 = normal) when ``stratify``.
    * Deterministic for a given ``seed`` regardless of the input order; each side
      keeps the input order.
    """
    if len(fractions) not in SPLIT_NAMES:
        raise ValueError(f"fractions must have 2 or 3 entries, got {tuple(fractions)}")
    fr = np.asarray(fractions, dtype=float)
    if (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(f"fractions must be non-negative with a positive sum: {fractions}")
    fr = fr / fr.sum()
    names = SPLIT_NAMES[len(fractions)]

    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r.group_id].append(i)

    side_of: dict[str, int] = {}
    free: list[str] = []
    for gid, idx in groups.items():
        given = (
            {records[i].meta.split for i in idx if records[i].meta.split}
            if honour_manifest
            else set()
        )
        known = [s for s in given if s in names]
        if len(set(known)) > 1:
            log.warning("group %s has conflicting split values %s; using %s",
                        gid, sorted(known), sorted(known)[0])
        if unknown := given - set(names):
            log.warning("group %s: split %s not in %s, reassigned", gid, sorted(unknown), names)
        if known:
            side_of[gid] = names.index(sorted(known)[0])
        else:
            free.append(gid)

    def label_of(gid: str) -> int:
        c = Counter(image_label(records[i].boxes, records[i].labels) for i in groups[gid])
        return min(c, key=lambda k: (-c[k], k))

    n_total = len(records)
    counts = np.zeros(len(names))
    for gid, s in side_of.items():
        counts[s] += len(groups[gid])
    rng = np.random.default_rng(seed)
    strata: dict[int, list[str]] = defaultdict(list)
    for gid in sorted(free):
        strata[label_of(gid) if stratify else 0].append(gid)

    for key in sorted(strata):
        gids = strata[key]
        order = rng.permutation(len(gids))
        n_stratum = sum(len(groups[g]) for g in gids)
        # targets: this stratum's share of what each side still needs overall
        need = np.clip(fr * n_total - counts, 0, None)
        if need.sum() == 0:
            need = fr.copy()
        target = need / need.sum() * n_stratum
        got = np.zeros(len(names))
        # big groups first (ties in the seeded order) so they do not overshoot at the end
        ordered = sorted((gids[j] for j in order), key=lambda g: -len(groups[g]))
        for gid in ordered:
            s = int(np.argmax(target - got))
            side_of[gid] = s
            got[s] += len(groups[gid])
        counts += got

    out: dict[str, list[SampleRecord]] = {n: [] for n in names}
    for r in records:
        out[names[side_of[r.group_id]]].append(r)
    log.info("split %d records (%d groups): %s", n_total, len(groups),
             {k: len(v) for k, v in out.items()})
    return out

"""Split one dataset's records into K virtual hospitals.

Every partitioner is a pure function of ``(records, k, seed)`` (plus its own
parameters): the same inputs always give the same split. Records of one group
(:attr:`~shared.data.sample.SampleRecord.group_id`: patient, else lesion, else image)
always land on the same site, every site is non-empty, and each site keeps its
records in their input order.

Schemes (by name, see :data:`PARTITIONERS` and :func:`partition`):

* ``"iid"``: groups shuffled and dealt out (stratified by image-level label) so that
  sites have about equal sizes and the same label mix.
* ``"dirichlet:ALPHA"``: label and quantity skew -- for each image-level class, the
  share of its groups that each site gets is drawn from ``Dirichlet(ALPHA)`` (Hsu et
  al., 2019). Small ``ALPHA`` (0.1) gives very different sites, large (100) about IID.
  ``"dirichlet:ALPHA,MIN"`` redraws until every site holds at least MIN records.
* ``"source"``: by origin -- one site per source (the record's ``meta.site``, else the
  folder the image came from); more sources than sites are merged, largest first.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from endofed.shared.data.sample import SampleRecord, image_label

log = logging.getLogger(__name__)

Partition = list[list[SampleRecord]]

# Folder names that hold the images of a site rather than naming it.
_IMAGE_DIR_NAMES = {"images", "imgs", "image", "frames", "jpg", "png"}


class PartitionError(ValueError):
    """A dataset cannot be split as asked (bad spec, too few groups or sources)."""


def _groups(records: Sequence[SampleRecord]) -> tuple[list[str], dict[str, list[int]]]:
    """Group ids in first-seen order and the record indices of each group."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        members[r.group_id].append(i)
    return list(members), members


def _check_k(records: Sequence[SampleRecord], k: int, n_groups: int) -> None:
    if k < 1:
        raise PartitionError(f"k must be >= 1, got {k}")
    if n_groups < k:
        raise PartitionError(
            f"cannot make {k} non-empty sites from {len(records)} records in "
            f"{n_groups} patient/lesion groups (groups are never split)"
        )


def _materialize(
    records: Sequence[SampleRecord], site_of_group: dict[str, int], k: int
) -> Partition:
    parts: Partition = [[] for _ in range(k)]
    for r in records:  # input order within each site
        parts[site_of_group[r.group_id]].append(r)
    return parts


def partition_iid(records: Sequence[SampleRecord], k: int, seed: int = 0) -> Partition:
    """Shuffle the groups and deal them, label by label, to the currently smallest site.

    Dealing one image-level label after the other stratifies the split: every site
    gets about the same number of images and the same label mix.
    """
    order, members = _groups(records)
    _check_k(records, k, len(order))
    rng = np.random.default_rng(seed)
    shuffled = [order[int(i)] for i in rng.permutation(len(order))]
    shuffled.sort(key=lambda g: _group_label(records, members[g]))  # stable: random within
    sizes = np.zeros(k, np.int64)
    site_of: dict[str, int] = {}
    for g in shuffled:
        s = int(np.argmin(sizes))  # ties: lowest site index
        site_of[g] = s
        sizes[s] += len(members[g])
    return _materialize(records, site_of, k)


def _group_label(records: Sequence[SampleRecord], idx: list[int]) -> int:
    """Most common image-level label of a group's records (ties: the larger label)."""
    counts = Counter(image_label(records[i].boxes, records[i].labels) for i in idx)
    return max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]


def partition_dirichlet(
    records: Sequence[SampleRecord],
    k: int,
    alpha: float,
    seed: int = 0,
    *,
    min_size: int = 0,
    max_draws: int = 500,
) -> Partition:
    """Label/quantity skew: per class, site shares ~ ``Dirichlet(alpha)`` over groups.

    Groups are labelled with their most common image-level label (0 = normal). After
    the draw, each empty site takes one group from the site with most groups, so all
    sites are non-empty. With ``min_size`` > 0 the draw is repeated (same random
    stream) until every site holds at least ``min_size`` records, as Flower Datasets'
    ``DirichletPartitioner(min_partition_size=...)`` does.

    Raises:
        PartitionError: bad alpha, or no draw in ``max_draws`` met ``min_size``.
    """
    if not alpha > 0:
        raise PartitionError(f"dirichlet alpha must be > 0, got {alpha}")
    if min_size < 0:
        raise PartitionError(f"dirichlet minimum site size must be >= 0, got {min_size}")
    order, members = _groups(records)
    _check_k(records, k, len(order))
    if min_size * k > len(records):
        raise PartitionError(
            f"cannot give {k} sites at least {min_size} records each from {len(records)}"
        )
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[str]] = defaultdict(list)
    for g in order:
        by_label[_group_label(records, members[g])].append(g)

    for _ in range(max(1, max_draws)):
        site_groups = _draw_dirichlet(by_label, k, alpha, rng)
        sizes = [sum(len(members[g]) for g in gs) for gs in site_groups]
        if min(sizes) >= min_size:
            break
    else:
        raise PartitionError(
            f"dirichlet:{alpha:g}: no draw in {max_draws} gave every one of {k} sites at "
            f"least {min_size} records (last sizes {sizes}); raise alpha or lower the minimum"
        )
    site_of = {g: s for s, gs in enumerate(site_groups) for g in gs}
    return _materialize(records, site_of, k)


def _draw_dirichlet(
    by_label: dict[int, list[str]], k: int, alpha: float, rng: np.random.Generator
) -> list[list[str]]:
    site_groups: list[list[str]] = [[] for _ in range(k)]
    for label in sorted(by_label):
        groups = by_label[label]
        perm = [groups[int(i)] for i in rng.permutation(len(groups))]
        shares = rng.dirichlet(np.full(k, float(alpha)))
        cuts = np.round(np.cumsum(shares)[:-1] * len(perm)).astype(int)
        for s, chunk in enumerate(np.split(np.arange(len(perm)), cuts)):
            site_groups[s].extend(perm[int(i)] for i in chunk)
    for s in range(k):
        if not site_groups[s]:
            donor = max(range(k), key=lambda j: (len(site_groups[j]), -j))
            site_groups[s].append(site_groups[donor].pop())
    return site_groups


def source_of(record: SampleRecord) -> str:
    """Where a record came from: ``meta.site``, else its image's (site) folder."""
    if record.meta.site:
        return record.meta.site
    parent = Path(record.meta.source or record.image_path).parent
    if parent.name.lower() in _IMAGE_DIR_NAMES:
        parent = parent.parent
    return str(parent)


def partition_by_source(
    records: Sequence[SampleRecord], k: int, seed: int = 0
) -> Partition:
    """One site per source; with more sources than sites, merge them (largest first
    into the currently smallest site). ``seed`` is unused (the split is fixed by the
    data) and accepted for a uniform signature.
    """
    if k < 1:
        raise PartitionError(f"k must be >= 1, got {k}")
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_source[source_of(r)].append(i)
    if len(by_source) < k:
        raise PartitionError(
            f"cannot make {k} sites by source: the records come from only "
            f"{len(by_source)} source(s) ({sorted(by_source)}); use 'iid' or 'dirichlet:A'"
        )
    site_of_source: dict[str, int] = {}
    sizes = np.zeros(k, np.int64)
    for src in sorted(by_source, key=lambda s: (-len(by_source[s]), s)):
        s = int(np.argmin(sizes))
        site_of_source[src] = s
        sizes[s] += len(by_source[src])
    # A group that spans sources follows the source of its first record.
    site_of: dict[str, int] = {}
    group_sources: dict[str, set[str]] = defaultdict(set)
    for r in records:
        src = source_of(r)
        site_of.setdefault(r.group_id, site_of_source[src])
        group_sources[r.group_id].add(src)
    spanning = sum(len(v) > 1 for v in group_sources.values())
    if spanning:
        log.warning("%d groups span several sources; each is kept whole on one site", spanning)
    return _materialize(records, site_of, k)


def _no_args(name: str, fn: Callable[[Sequence[SampleRecord], int, int], Partition]):
    def run(records: Sequence[SampleRecord], k: int, seed: int, args: list[str]) -> Partition:
        if args:
            raise PartitionError(f"partition scheme '{name}' takes no parameter, got {args}")
        return fn(records, k, seed)

    return run


def _dirichlet_spec(
    records: Sequence[SampleRecord], k: int, seed: int, args: list[str]
) -> Partition:
    if len(args) not in (1, 2):
        raise PartitionError(
            "partition scheme 'dirichlet' needs an alpha and optionally a minimum site "
            "size: 'dirichlet:0.5' or 'dirichlet:0.5,20'"
        )
    try:
        alpha = float(args[0])
    except ValueError:
        raise PartitionError(f"dirichlet alpha must be a number, got {args[0]!r}") from None
    try:
        min_size = int(args[1]) if len(args) == 2 else 0
    except ValueError:
        raise PartitionError(
            f"dirichlet minimum site size must be an integer, got {args[1]!r}"
        ) from None
    return partition_dirichlet(records, k, alpha, seed, min_size=min_size)


#: Scheme name -> ``fn(records, k, seed, args)``; ``args`` come after ``:`` in the spec.
PARTITIONERS: dict[str, Callable[[Sequence[SampleRecord], int, int, list[str]], Partition]] = {
    "iid": _no_args("iid", partition_iid),
    "dirichlet": _dirichlet_spec,
    "source": _no_args("source", partition_by_source),
}


def partition(records: Sequence[SampleRecord], spec: str, k: int, seed: int = 0) -> Partition:
    """Split ``records`` into ``k`` sites by a spec: ``"iid"``, ``"dirichlet:0.5"``,
    ``"source"`` (see :data:`PARTITIONERS`)."""
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in PARTITIONERS:
        raise PartitionError(
            f"unknown partition scheme {spec!r}; expected one of "
            f"{sorted(PARTITIONERS)} (e.g. 'iid', 'dirichlet:0.5', 'source')"
        )
    args = [a.strip() for a in rest.split(",") if a.strip()] if rest else []
    parts = PARTITIONERS[name](records, k, seed, args)
    log.info("partition %s: %d records -> site sizes %s", spec, len(records),
             [len(p) for p in parts])
    return parts


def label_counts(parts: Partition, num_classes: int) -> np.ndarray:
    """``(k, num_classes + 1)`` image-level label counts per site (column 0 = normal)."""
    out = np.zeros((len(parts), num_classes + 1), np.int64)
    for s, part in enumerate(parts):
        for r in part:
            out[s, image_label(r.boxes, r.labels)] += 1
    return out

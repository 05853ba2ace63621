"""Virtual hospitals: materialised once, stable, one Flower partition each, device shift."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

from endofed.shared.data.site import load_sample, scan_site
from endofed.simulations.virtual_sites import flower_site_names, materialize_sites


def test_materialised_sites_are_stable_and_match_flower_partitions(tmp_path, tiny_spec):
    spec = tiny_spec(tmp_path, sites=3, images_per_site=8, partition="iid")
    cfg = spec.config(0)
    sites = materialize_sites(spec, cfg)
    assert [s.name for s in sites] == ["site_1", "site_2", "site_3"]
    assert all(len(s.val) > 0 and len(s.train) > 0 for s in sites)
    sizes = [len(s.records) for s in sites]
    assert sizes == sorted(sizes, reverse=True)
    assert sum(sizes) == 24
    # train and val never share a patient
    for s in sites:
        assert not {r.group_id for r in s.train} & {r.group_id for r in s.val}
    # the ClientApp's `partition=source` over the site folders gives site i to node i
    assert flower_site_names(sites) == {f"site_{i}": f"site_{i}" for i in (1, 2, 3)}
    # a second call reuses the folders: same records, same split
    again = materialize_sites(spec, cfg)
    for a, b in zip(sites, again):
        assert [r.image_path for r in a.val] == [r.image_path for r in b.val]
        assert [r.image_path for r in a.train] == [r.image_path for r in b.train]


def test_device_shift_changes_colours_not_annotations(tmp_path, tiny_spec):
    plain = materialize_sites(tiny_spec(tmp_path / "plain", images_per_site=4), tiny_spec(
        tmp_path).config(0))
    spec = tiny_spec(tmp_path / "shift", images_per_site=4, device_shift=True)
    shifted = materialize_sites(spec, spec.config(0))
    means = []
    for a, b in zip(plain, shifted):
        assert len(a.records) == len(b.records)
        for ra, rb in zip(a.records, b.records):
            assert rb.image_path != ra.image_path and rb.image_path.parent.name == "images"
            np.testing.assert_allclose(ra.boxes, rb.boxes)
            sa, sb = load_sample(ra), load_sample(rb)
            assert sa.image.shape == sb.image.shape
            np.testing.assert_array_equal(sa.mask, sb.mask)
            assert np.abs(sa.image.astype(int) - sb.image.astype(int)).mean() > 1.0
        means.append(np.mean([load_sample(r).image.reshape(-1, 3).mean(0)
                              for r in b.records], axis=0))
    # the two hospitals got different camera colour profiles
    assert np.abs(means[0] - means[1]).max() > 1.0


def test_no_staging_folder_is_left_behind(tmp_path, tiny_spec):
    spec = tiny_spec(tmp_path, images_per_site=4)
    materialize_sites(spec, spec.config(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sites", "source"]
    assert sorted(p.name for p in (tmp_path / "sites").iterdir()) == [
        "site_1", "site_2", "sites.json"]


def test_virtual_site_folders_can_read_the_originals_they_point_at(tmp_path, tiny_spec):
    """A virtual hospital's manifest names the source images; its settings file allows
    exactly those folders, so the site scan (which refuses paths outside a site folder)
    reads every record."""
    spec = tiny_spec(tmp_path, images_per_site=4)
    sites = materialize_sites(spec, spec.config(0))
    for s in sites:
        folder = tmp_path / "sites" / s.name
        index = scan_site(folder)
        assert len(index.records) == len(s.records)
        assert not index.report.problems
        allowed = tomllib.loads((folder / "endofed-site.toml").read_text())["allowed-roots"]
        assert all(Path(a).is_relative_to(tmp_path / "source") for a in allowed)

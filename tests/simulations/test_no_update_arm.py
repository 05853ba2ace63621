"""A federated arm in which no site's update was ever aggregated is an error, not a result."""

from __future__ import annotations

from endofed.simulations.experiment import rounds_with_updates


def _write(path, text):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.csv").write_text(text)
    return path


def test_a_run_where_every_site_was_refused_has_no_round_with_updates(tmp_path):
    # the shape of a real run whose three Ray workers were killed for memory in round 1
    run = _write(tmp_path / "refused", "round,site,round-seconds,rejected\n"
                 "1,global,99.9,\n1,node-1,,1.0\n1,node-2,,1.0\n"
                 "2,global,0.4,\n2,node-1,,1.0\n2,node-2,,1.0\n")
    assert rounds_with_updates(run) == 0


def test_rounds_with_updates_counts_global_rows_that_aggregated_a_site(tmp_path):
    run = _write(tmp_path / "mixed", "round,site,sites-aggregated,map50\n"
                 "1,global,0,0.1\n1,site_1,,0.1\n2,global,2,0.3\n2,site_1,,0.3\n"
                 "3,global,3,0.4\n")
    assert rounds_with_updates(run) == 2

"""Simulations: private Flower runtimes, the central baseline and the research grid.

Runtimes: :mod:`.superlink` (a private SuperLink, ``flwr run``, cleanup),
:mod:`.simulation_runtime` (Ray simulation), :mod:`.deployment` (+
:mod:`.deployment_security`): SuperNodes on loopback; helpers :mod:`.flwr_home`,
:mod:`.flwr_cli`, :mod:`.flwr_run`, :mod:`.run_config`, :mod:`.loopback`.
Experiments: :mod:`.experiment` (runner, resume), :mod:`.experiment_spec`,
:mod:`.virtual_sites`, :mod:`.site_evaluator`, :mod:`.experiment_results`,
:mod:`.experiment_summary`, :mod:`.experiment_plots`; :mod:`.central`,
:mod:`.federated`, :mod:`.device_shift`.
"""

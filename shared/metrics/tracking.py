"""Optional experiment tracking: MLflow or TensorBoard, local file stores only.

Off by default (run-config key ``tracking = "none"``; ``--track`` on the CLI). The
backends are imported lazily, only when a run asks for them, from the ``tracking``
extra (``pip install endofed[tracking]``):

* ``mlflow``: a sqlite store ``<store>/mlflow.db`` with artifacts in
  ``<store>/artifacts`` (MLflow's ``file:`` store is in maintenance mode and refuses to
  start without ``MLFLOW_ALLOW_FILE_STORE``); ``<store>`` is ``<run>/mlruns``.
  One MLflow run per EndoFed run: the run settings as params, the per-round (or
  per-epoch) scalars as metrics (step = round / epoch), the report files and the final
  model as artifacts. A resumed run continues the same MLflow run.
* ``tensorboard``: event files in ``<run>/tensorboard`` (scalars; the settings as a
  text summary).

With ``tracking-dir`` set, the store is there instead (``<dir>/mlruns``, TensorBoard's
``<dir>/tensorboard/<run-name>``): the experiment grid keeps all its arms in one store,
one tracking run per arm and seed, tagged with strategy, DP budget and seed.

Scalar names are ``<site>/<metric>`` for a federated round (``global/map50``, the
``metrics.csv`` rows) and the ``train_history.json`` keys for a central epoch. Nothing
leaves the machine: both stores are plain files. A logging failure in the middle of a
run is a warning, never the end of a study.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from endofed.shared.config.choices import TRACKERS
from endofed.shared.config.coercion import ConfigError

log = logging.getLogger(__name__)

NONE = "none"
MLFLOW = "mlflow"
TENSORBOARD = "tensorboard"
#: The backends this module implements (``shared/config/choices.py`` TRACKERS).
BACKENDS: tuple[str, ...] = (NONE, MLFLOW, TENSORBOARD)
#: Folder names in the run directory (or ``tracking-dir``).
MLFLOW_DIR = "mlruns"
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
#: Tag that ties an MLflow run to its EndoFed run directory (a resume finds it).
RUN_DIR_TAG = "endofed.run-dir"

_INSTALL = "pip install endofed[tracking]"
_MODULES = {MLFLOW: "mlflow", TENSORBOARD: "tensorboard"}
_BAD_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")
_MAX_PARAMS, _MAX_METRICS = 100, 1000  # MLflow's log_batch limits


class TrackingError(ConfigError):
    """A tracker that cannot start (backend not installed, unknown name): one line."""


class Tracker(Protocol):
    """What a run reports to a tracking backend."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_artifacts(self, paths: Iterable[Path], subdir: str = "") -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """``tracking = "none"``: every call does nothing."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nothing."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Nothing."""

    def log_artifacts(self, paths: Iterable[Path], subdir: str = "") -> None:
        """Nothing."""

    def close(self, status: str = "FINISHED") -> None:
        """Nothing."""


def check_tracking(kind: str) -> None:
    """Raise :class:`TrackingError` unless ``kind`` is a backend that can start here."""
    if kind not in BACKENDS:
        raise TrackingError(
            f"config key 'tracking': unknown {kind!r} (choose one of {', '.join(TRACKERS)})",
            key="tracking",
        )
    module = _MODULES.get(kind)
    if module is None:
        return
    try:
        __import__(module)
    except ImportError:
        raise TrackingError(
            f"--track {kind}: the {module} package is not installed; {_INSTALL}",
            key="tracking",
        ) from None


def store_dir(kind: str, run_dir: Path, tracking_dir: Path | None, run_name: str) -> Path:
    """Where ``kind`` writes for the run in ``run_dir`` (see the module docstring)."""
    if kind == MLFLOW:
        return Path(tracking_dir or run_dir) / MLFLOW_DIR
    if tracking_dir:
        return Path(tracking_dir) / TENSORBOARD_DIR / run_name
    return Path(run_dir) / TENSORBOARD_DIR


def open_tracker(
    kind: str,
    run_dir: Path,
    *,
    run_name: str,
    tracking_dir: Path | None = None,
    experiment: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Tracker:
    """The tracker of one run (:class:`NullTracker` for ``none``).

    ``experiment`` names the MLflow experiment (default: ``endofed``, or the name of
    ``tracking-dir`` when one store holds several runs). ``tags`` are set on the MLflow
    run (and written to TensorBoard's settings text).
    """
    check_tracking(kind)
    if kind == NONE:
        return NullTracker()
    run_dir = Path(run_dir).resolve()
    where = store_dir(kind, run_dir, Path(tracking_dir).resolve() if tracking_dir else None,
                      run_name)
    tags = {k: str(v) for k, v in (tags or {}).items()}
    if kind == MLFLOW:
        name = experiment or (Path(tracking_dir).resolve().name if tracking_dir else "endofed")
        return MlflowTracker(where, experiment=name, run_name=run_name, run_dir=run_dir,
                             tags=tags)
    return TensorBoardTracker(where, tags=tags)


# --- scalars of a round or epoch -------------------------------------------------------


def scalar(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (text, empty cells, nan/inf)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else None
    try:  # numpy scalars
        number = float(value.item())  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metric_name(name: str) -> str:
    """A scalar name both backends accept (MLflow allows letters, digits, ``_-. /``)."""
    return _BAD_NAME.sub("_", str(name))


def round_scalars(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """One round's ``metrics.csv`` rows as ``{"<site>/<metric>": value}`` (the numeric,
    finite cells; ``round`` and ``site`` are the step and the prefix)."""
    out: dict[str, float] = {}
    for row in rows:
        site = str(row.get("site", ""))
        for key, value in row.items():
            if key in ("round", "site"):
                continue
            number = scalar(value)
            if number is not None:
                out[metric_name(f"{site}/{key}")] = number
    return out


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """One central epoch's ``train_history.json`` row (``epoch`` is the step)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        number = scalar(value) if key != "epoch" else None
        if number is not None:
            out[metric_name(key)] = number
    return out


def _param_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


# --- backends ---------------------------------------------------------------------------


class MlflowTracker:
    """One MLflow run in a sqlite store (artifacts as files beside it)."""

    def __init__(self, where: Path, *, experiment: str, run_name: str, run_dir: Path,
                 tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunStatus
        from mlflow.tracking import MlflowClient

        self._status = RunStatus
        where.mkdir(parents=True, exist_ok=True)
        self.uri = f"sqlite:///{where / MLFLOW_DB}"
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            experiment_id = self.client.create_experiment(
                experiment, artifact_location=(where / "artifacts").as_uri()
            )
        previous = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{_quote(run_dir)}'",
            max_results=1,
        )
        if previous:  # a resumed EndoFed run continues its MLflow run
            self.run_id = previous[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value)
            log.info("tracking: continuing MLflow run %s in %s", self.run_id, self.uri)
        else:
            run = self.client.create_run(
                experiment_id, run_name=run_name, tags={**tags, RUN_DIR_TAG: str(run_dir)}
            )
            self.run_id = run.info.run_id
            log.info("tracking: MLflow run %s in %s", self.run_id, self.uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Every setting as an MLflow param (values as text; lists comma-separated)."""
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        items = [p for p in items if p.key not in logged]  # a resume logged them already
        changed = [k for k, v in params.items() if k in logged and logged[k] != _param_value(v)]
        if changed:
            log.warning("tracking: params %s differ from the run's first start; MLflow "
                        "keeps the first values", ", ".join(sorted(changed)))
        for i in range(0, len(items), _MAX_PARAMS):
            self._guard("params", self.client.log_batch, self.run_id,
                        params=items[i:i + _MAX_PARAMS])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """``metrics`` at ``step`` (round or epoch)."""
        import time

        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [Metric(k, float(v), stamp, int(step)) for k, v in metrics.items()]
        for i in range(0, len(items), _MAX_METRICS):
            self._guard("metrics", self.client.log_batch, self.run_id,
                        metrics=items[i:i + _MAX_METRICS])

    def log_artifacts(self, paths: Iterable[Path], subdir: str = "") -> None:
        """Copy the existing files of ``paths`` into the run's artifacts."""
        for path in paths:
            if Path(path).is_file():
                self._guard("artifact", self.client.log_artifact, self.run_id, str(path),
                            subdir or None)

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run with ``status`` (FINISHED, FAILED, KILLED)."""
        self._guard("status", self.client.set_terminated, self.run_id, status)

    @staticmethod
    def _guard(what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # tracking never ends a study
            log.warning("tracking: MLflow %s not logged (%s)", what,
                        " ".join(str(exc).split()) or type(exc).__name__)


class TensorBoardTracker:
    """Scalars as TensorBoard event files (settings as a text summary)."""

    def __init__(self, where: Path, *, tags: Mapping[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        where.mkdir(parents=True, exist_ok=True)
        self.where = where
        self.writer = SummaryWriter(log_dir=str(where))
        self.tags = dict(tags)
        log.info("tracking: TensorBoard event files in %s", where)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The settings (and tags) as one markdown table under the ``settings`` tag."""
        rows = ["| key | value |", "|---|---|"]
        rows += [f"| {k} | {_param_value(v)} |" for k, v in {**self.tags, **params}.items()]
        self.writer.add_text("settings", "\n".join(rows), global_step=0)
        self.writer.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """``metrics`` at ``step``; flushed so a running TensorBoard sees them."""
        for key, value in metrics.items():
            self.writer.add_scalar(key, float(value), global_step=int(step))
        self.writer.flush()

    def log_artifacts(self, paths: Iterable[Path], subdir: str = "") -> None:
        """TensorBoard has no artifact store: the files stay in the run directory."""

    def close(self, status: str = "FINISHED") -> None:
        """Flush and close the event file."""
        self.writer.close()


def _quote(path: Path) -> str:
    return str(path).replace("'", "\\'")

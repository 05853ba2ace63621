"""Everything that crosses the network between a hospital and the coordinating center.

One place for the names, types and meaning of every record and key in a Flower
message. The ClientApp builds its replies from these names, the server screens and
merges replies with them, and the outgoing audit (:mod:`endofed.privacy.outgoing`)
lets through only what is declared here. Adding a key means adding it here, with its
meaning; anything not declared is refused at the site before it leaves.

Direction of each message (Flower Message API):

* train request (center -> site): :data:`ARRAYS` (global trainable weights) and
  :data:`CONFIG` (the :data:`ROUND_CONFIG` keys).
* train reply (site -> center): :data:`ARRAYS` (the site's trainable weights after
  local training), :data:`METRICS` (:data:`TRAIN_METRICS`), :data:`SITE`; or, when the
  site declines the round, :data:`METRICS` with :data:`DECLINED` = 1 and no arrays.
* evaluate request: :data:`ARRAYS` (and :data:`CONFIG`).
* evaluate reply: :data:`METRIC_STATE` (the additive ``MetricAccumulator`` state:
  counts and histograms, nothing per image), :data:`METRICS` (:data:`NUM_EXAMPLES`),
  :data:`SITE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# -- records ---------------------------------------------------------------------------
ARRAYS = "arrays"
"""ArrayRecord: trainable model weights by parameter name (never frozen weights)."""
CONFIG = "config"
"""ConfigRecord of a request: the round configuration (:data:`ROUND_CONFIG`)."""
METRICS = "metrics"
"""MetricRecord of a reply: numeric scalars only (a list of numbers could carry an image)."""
METRIC_STATE = "metric-state"
"""ArrayRecord of an evaluate reply: ``MetricAccumulator.state()`` (additive sums)."""
SITE = "site"
"""ConfigRecord of a reply: exactly ``{SITE_NAME: <hospital name>}``."""
SITE_NAME = "site-name"
"""The hospital's display name (no path separators, at most 128 printable characters)."""

RecordType = Literal["array", "metric", "config"]


@dataclass(frozen=True)
class Key:
    """One key of a record: its name, value type and what it means."""

    name: str
    type: type
    meaning: str


def _keys(*keys: Key) -> dict[str, Key]:
    return {k.name: k for k in keys}


# -- round config (center -> site, in CONFIG) --------------------------------------------
# Flower's central-DP wrappers (flwr.supercore.differential_privacy).
CLIPPING_NORM = "clipping_norm"
NORM_BIT = "norm_bit"

SERVER_ROUND = "server-round"
NUM_SERVER_ROUNDS = "num-server-rounds"
STUDY_ID = "study-id"
RUN_NAME = "run-name"
PROXIMAL_MU = "proximal-mu"

ROUND_CONFIG: dict[str, Key] = _keys(
    Key(SERVER_ROUND, int, "1-based number of the round being run"),
    Key(NUM_SERVER_ROUNDS, int, "rounds the study plans in total (DP plans its noise by it)"),
    Key(STUDY_ID, str, "identity of the study, kept on resume (the privacy ledger keys by it)"),
    Key(RUN_NAME, str, "the coordinator's run name (display; older servers send no study-id)"),
    Key(PROXIMAL_MU, float, "FedProx proximal weight (0 = none)"),
    Key(CLIPPING_NORM, float, "central DP: the norm the site clips its update to"),
)

# -- metrics of a train reply (site -> center, in METRICS) ----------------------------------
NUM_EXAMPLES = "num-examples"
DECLINED = "declined"
TRAIN_SECONDS = "train-seconds"
EPSILON_SPENT = "epsilon-spent"
EPSILON_TARGET = "epsilon-target"
DP_DELTA = "dp-delta"
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"
DP_SAMPLE_RATE = "dp-sample-rate"
DP_STEPS = "dp-steps"

TRAIN_METRICS: dict[str, Key] = _keys(
    Key(NUM_EXAMPLES, float, "training images of the site (FedAvg weight); 0 when declined"),
    Key(DECLINED, float, "1 = the site declined the round (privacy budget); no arrays sent"),
    Key(TRAIN_SECONDS, float, "wall-clock seconds of local training"),
    Key("train-loss", float, "mean total loss of the last local epoch"),
    Key("train-loss-cls", float, "focal classification loss, last epoch"),
    Key("train-loss-reg", float, "smooth-L1 box loss, last epoch"),
    Key("train-loss-seg", float, "segmentation loss (BCE + IoU), last epoch"),
    Key("train-images", float, "images seen in the last epoch (a Poisson draw under DP)"),
    Key("train-images-per-s", float, "throughput of the last epoch"),
    Key(EPSILON_SPENT, float, "epsilon the site's ledger has spent after this round"),
    Key(EPSILON_TARGET, float, "the site's own epsilon budget"),
    Key(DP_DELTA, float, "the site's delta"),
    Key(DP_NOISE_MULTIPLIER, float, "DP-SGD noise multiplier of this round"),
    Key(DP_SAMPLE_RATE, float, "Poisson sampling rate q = 1 / steps per epoch"),
    Key(DP_STEPS, float, "noisy steps accounted this round (empty draws included)"),
    Key(NORM_BIT, int, "central DP, client-adaptive clipping: 1 if the update's norm was "
        "within the clipping norm (Flower's adaptiveclipping_mod adds it)"),
)

# -- metrics of an evaluate reply ---------------------------------------------------------
EVALUATE_METRICS: dict[str, Key] = _keys(
    Key(NUM_EXAMPLES, float, "images the site evaluated (its validation split)"),
)


# -- SecAgg+ rounds (flwr 1.41 legacy workflow: SecAggPlusWorkflow + secaggplus_mod) ---------
SECAGG_CONFIGS = "secaggplus_configs"
"""ConfigRecord of each SecAgg+ stage (public keys, encrypted shares, masked vectors)."""
LEGACY_FITINS_PARAMETERS = "fitins.parameters"
"""ArrayRecord of the legacy ``FitIns`` the masked-vector stage hands the ClientApp."""
FITRES_PARAMETERS = "fitres.parameters"
"""Legacy ``FitRes`` weights: emptied by secaggplus_mod (they travel masked)."""
FITRES_METRICS = "fitres.metrics"
"""Legacy ``FitRes`` metrics: the :data:`TRAIN_METRICS` of the round."""
FITRES_NUM_EXAMPLES = "fitres.num_examples"
FITRES_STATUS = "fitres.status"

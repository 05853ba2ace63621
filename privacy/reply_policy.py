"""Which training metrics a site under differential privacy may report.

DP-SGD protects the *weights* it releases. Everything else a site computes from its
images (training losses, the realised size of a Poisson draw, throughput measured on
those images) is outside the guarantee, so a DP site keeps it in its own log and
sends only the names in :data:`DP_REPORTABLE_METRICS`: the accounting of the round
(from :meth:`endofed.privacy.dp.PrivateRound.finish`), its training-set size (the
FedAvg weight, which the site discloses by joining) and wall-clock time.
"""

from __future__ import annotations

from collections.abc import Mapping

from endofed.shared import protocol

DP_REPORTABLE_METRICS: frozenset[str] = frozenset({
    protocol.NUM_EXAMPLES,
    protocol.DECLINED,  # the refusal itself, with the ledger's spent/target below
    protocol.TRAIN_SECONDS,
    protocol.EPSILON_SPENT,
    protocol.EPSILON_TARGET,
    protocol.DP_DELTA,
    protocol.DP_NOISE_MULTIPLIER,
    protocol.DP_SAMPLE_RATE,
    protocol.DP_STEPS,
    protocol.NORM_BIT,  # central DP on top: computed from the already private update
})


def private_reply_metrics(
    metrics: Mapping[str, float],
) -> tuple[dict[str, float], dict[str, float]]:
    """Split a DP site's round metrics into (sent to the server, kept in the site's log)."""
    sent = {k: float(v) for k, v in metrics.items() if k in DP_REPORTABLE_METRICS}
    kept = {k: float(v) for k, v in metrics.items() if k not in DP_REPORTABLE_METRICS}
    return sent, kept

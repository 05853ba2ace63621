"""Privacy accounting on top of Opacus' accountants.

A site's privacy history is a list of ``(noise_multiplier, sample_rate, steps)``
tuples, exactly the ``history`` of an Opacus accountant. It does not depend on the
accountant type, so the ledger stores it once and any registered accountant
(:data:`ACCOUNTANTS`) turns it into an epsilon for a given delta.

:func:`calibrate_noise_multiplier` is the history-aware counterpart of
:func:`opacus.accountants.utils.get_noise_multiplier`: it finds the smallest noise
multiplier such that *already spent history + planned steps* stays within the target,
which Opacus' helper (one homogeneous stretch of steps only) cannot express.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable, Sequence

from opacus.accountants import IAccountant, PRVAccountant, RDPAccountant

log = logging.getLogger(__name__)

#: One stretch of DP-SGD steps: (noise multiplier, Poisson sampling rate, steps).
HistoryEntry = tuple[float, float, int]

#: Accountant registry: ``dp-accountant`` name -> Opacus accountant class.
ACCOUNTANTS: dict[str, Callable[[], IAccountant]] = {
    "prv": PRVAccountant,
    "rdp": RDPAccountant,
}

MIN_NOISE_MULTIPLIER = 0.3
#: Default cap on the noise multiplier (config key ``dp-max-noise-multiplier``). A round
#: that would need more noise than this to fit the remaining budget is declined: it
#: would cost almost no epsilon, but its update would be noise, not learning.
MAX_NOISE_MULTIPLIER = 10.0


class PrivacyBudgetError(RuntimeError):
    """The (epsilon, delta) budget cannot accommodate the requested steps."""

    def __init__(self, message: str, *, spent: float, target: float) -> None:
        super().__init__(message)
        self.spent = float(spent)
        self.target = float(target)


def create_accountant(name: str) -> IAccountant:
    """A fresh Opacus accountant registered as ``name`` (``prv`` or ``rdp``)."""
    try:
        return ACCOUNTANTS[name]()
    except KeyError:
        raise ValueError(
            f"config key 'dp-accountant': unknown accountant {name!r}; "
            f"choose one of {sorted(ACCOUNTANTS)}"
        ) from None


def compress_history(history: Iterable[Sequence[float]]) -> list[HistoryEntry]:
    """Validate and merge consecutive entries with equal (noise, rate); drop empty ones.

    Merging does not change the composition (it is the same sequence of steps) but
    keeps the PRV accountant fast and makes equal histories compare equal.
    """
    out: list[HistoryEntry] = []
    for entry in history:
        if len(entry) != 3:
            raise ValueError(f"privacy history entry {entry!r}: expected (sigma, q, steps)")
        sigma, q, steps = float(entry[0]), float(entry[1]), int(entry[2])
        if steps < 0 or not 0.0 < q <= 1.0 or not sigma > 0.0:
            raise ValueError(
                f"privacy history entry {entry!r}: need sigma > 0, 0 < q <= 1, steps >= 0"
            )
        if steps == 0:
            continue
        if out and out[-1][0] == sigma and out[-1][1] == q:
            out[-1] = (sigma, q, out[-1][2] + steps)
        else:
            out.append((sigma, q, steps))
    return out


@functools.lru_cache(maxsize=512)
def _epsilon(accountant: str, history: tuple[HistoryEntry, ...], delta: float) -> float:
    acc = create_accountant(accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


def compute_epsilon(
    history: Iterable[Sequence[float]], *, delta: float, accountant: str = "prv"
) -> float:
    """Epsilon of composing ``history`` at ``delta`` with the named accountant.

    Results are memoised (PRV composition costs about a second on a slow CPU).
    """
    steps = tuple(compress_history(history))
    if not steps:
        return 0.0
    return _epsilon(accountant, steps, float(delta))


def calibrate_noise_multiplier(
    *,
    history: Iterable[Sequence[float]],
    sample_rate: float,
    steps: int,
    target_epsilon: float,
    delta: float,
    accountant: str = "prv",
    rtol: float = 0.01,
    max_noise_multiplier: float = MAX_NOISE_MULTIPLIER,
) -> float:
    """Smallest noise multiplier with ``epsilon(history + planned steps) <= target``.

    The result is within ``rtol`` (relative) of the target from below, or
    :data:`MIN_NOISE_MULTIPLIER` when even that much noise is not needed. Uses a
    safeguarded false-position search on ``log(epsilon)`` versus ``log(sigma)``, which
    is nearly linear, so few (expensive) accountant evaluations are needed.

    Raises:
        PrivacyBudgetError: the history alone already reaches the target, or even
            ``max_noise_multiplier`` does not fit the planned steps (the remaining
            budget is too small for a useful round).
    """
    past = compress_history(history)
    if steps <= 0:
        raise ValueError(f"planned steps must be > 0, got {steps}")
    spent = compute_epsilon(past, delta=delta, accountant=accountant)
    if spent >= target_epsilon:
        raise PrivacyBudgetError(
            f"privacy budget exhausted: spent epsilon {spent:.4g} >= target "
            f"{target_epsilon:.4g}",
            spent=spent,
            target=target_epsilon,
        )
    log_target = math.log(target_epsilon)

    def f(x: float) -> float:  # > 0: too little noise
        eps = compute_epsilon(
            [*past, (math.exp(x), sample_rate, steps)], delta=delta, accountant=accountant
        )
        return math.log(max(eps, 1e-12)) - log_target

    if max_noise_multiplier < MIN_NOISE_MULTIPLIER:
        raise ValueError(
            f"config key 'dp-max-noise-multiplier': must be >= {MIN_NOISE_MULTIPLIER}, "
            f"got {max_noise_multiplier}"
        )
    x_min, x_max = math.log(MIN_NOISE_MULTIPLIER), math.log(max_noise_multiplier)
    # Bracket the root, starting at sigma = 1 and moving by factors of 2.
    x = 0.0
    fx = f(x)
    if fx > 0:
        lo, f_lo = x, fx
        while True:
            x = min(x + math.log(2.0), x_max)
            fx = f(x)
            if fx <= 0:
                hi, f_hi = x, fx
                break
            if x >= x_max:
                raise PrivacyBudgetError(
                    f"planned {steps} steps at sample rate {sample_rate:.4g} do not fit the "
                    f"remaining budget (spent {spent:.4g} of {target_epsilon:.4g}) even with "
                    f"noise multiplier {max_noise_multiplier:g} (dp-max-noise-multiplier); "
                    "the budget is used up for useful training - raise dp-epsilon only if "
                    "the data governance allows it",
                    spent=spent,
                    target=target_epsilon,
                )
            lo, f_lo = x, fx
    else:
        hi, f_hi = x, fx
        while True:
            if x <= x_min:
                return MIN_NOISE_MULTIPLIER
            x = max(x - math.log(2.0), x_min)
            fx = f(x)
            if fx > 0:
                lo, f_lo = x, fx
                break
            hi, f_hi = x, fx
    # Illinois false position on the bracket [lo, hi]; ``hi`` stays feasible (f <= 0).
    # ``w_lo``/``w_hi`` are the (possibly halved) values used for interpolation only.
    tol = math.log1p(-rtol)  # accept f(hi) in [tol, 0]
    w_lo, w_hi = f_lo, f_hi
    side = 0
    for _ in range(60):
        if f_hi >= tol or hi - lo < 1e-6:
            break
        x = hi - w_hi * (hi - lo) / (w_hi - w_lo)
        if not lo < x < hi:
            x = 0.5 * (lo + hi)
        fx = f(x)
        if fx <= 0:
            hi, f_hi, w_hi = x, fx, fx
            if side == -1:
                w_lo *= 0.5
            side = -1
        else:
            lo, f_lo, w_lo = x, fx, fx
            if side == 1:
                w_hi *= 0.5
            side = 1
    sigma = math.exp(hi)
    log.debug(
        "calibrated noise multiplier %.4f for %d steps at q=%.4g (target eps %.3g, delta %.2g)",
        sigma, steps, sample_rate, target_epsilon, delta,
    )
    return sigma

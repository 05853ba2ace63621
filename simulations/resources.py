"""GPU shares for the ClientApps of a Ray simulation (``client-resources-num-gpus``).

Ray gives a ClientApp process the GPUs it reserved (``CUDA_VISIBLE_DEVICES``) and no GPU
otherwise, so with ``num_gpus = 0`` (flwr's default) the federated arms train on CPU even
on a CUDA workstation while the central arm uses the GPU. :func:`client_gpu_share`
decides the share (pure: tested without a GPU); :func:`cuda_device_count` says what this
machine has.
"""

from __future__ import annotations

import math

import torch


def cuda_device_count() -> int:
    """CUDA devices torch can use here (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def client_gpu_share(num_supernodes: int, cuda_devices: int,
                     gpus_per_client: float | None = None) -> float | None:
    """The GPU share each ClientApp reserves, or ``None`` to leave flwr's default (CPU).

    ``gpus_per_client=None`` (auto): no CUDA device -> ``None`` (nothing changes on a CPU
    machine); else every ClientApp gets ``1 / ceil(num_supernodes / cuda_devices)`` of a
    GPU, so all of them fit on the devices at once (capped at one whole GPU). An explicit
    value is checked: 0 keeps the clients on CPU, a fraction shares one GPU, a whole
    number reserves that many GPUs; more than ``cuda_devices`` could never be scheduled.
    """
    if num_supernodes < 1:
        raise ValueError(f"num_supernodes must be >= 1, got {num_supernodes}")
    if cuda_devices < 0:
        raise ValueError(f"cuda_devices must be >= 0, got {cuda_devices}")
    if gpus_per_client is None:
        if cuda_devices == 0:
            return None
        return min(1.0, 1.0 / math.ceil(num_supernodes / cuda_devices))
    share = float(gpus_per_client)
    if not math.isfinite(share) or share < 0:
        raise ValueError(f"gpus-per-client must be a number >= 0, got {gpus_per_client}")
    if share == 0:
        return 0.0
    if cuda_devices == 0:
        raise ValueError(
            f"gpus-per-client {share:g}: no CUDA device is visible here (torch sees none); "
            "use 0 or leave it unset to train the clients on CPU"
        )
    if share > 1 and not share.is_integer():
        raise ValueError(f"gpus-per-client {share:g}: above 1 it must be a whole number "
                         "of GPUs (Ray cannot split one client across GPUs)")
    if share > cuda_devices:
        raise ValueError(f"gpus-per-client {share:g} is more than the {cuda_devices} CUDA "
                         "device(s) here: no client could be scheduled")
    return share


def describe_client_device(share: float | None, cuda_devices: int) -> str:
    """Where the ClientApps train, in words, for the log."""
    if not share:
        why = "no CUDA device" if cuda_devices == 0 else "gpus-per-client = 0"
        return f"on CPU ({why})"
    return f"on CUDA ({share:.3g} of a GPU each, {cuda_devices} device(s))"

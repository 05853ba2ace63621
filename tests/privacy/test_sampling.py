"""The Poisson loader DP-SGD uses (real Opacus sampler)."""

from __future__ import annotations

import pytest
import torch

from endofed.privacy.sampling import (
    make_poisson_loader,
    poisson_sample_rate,
    poisson_steps_per_epoch,
    secret_generator,
)
from endofed.shared.data import Batch, DetectionDataset, scan_site

S, M = 64, 4


@pytest.fixture
def dataset(kvasir_site) -> DetectionDataset:
    specs = {f"img{i}": [(4 + i, 6, 30 + i, 40)] for i in range(5)}
    specs["normal"] = []
    return DetectionDataset(scan_site(kvasir_site(specs, size=(S, S))).records,
                            image_size=S, train=False, max_boxes=M)


def test_sample_rate_gives_exact_epoch_length() -> None:
    for k in range(1, 2000):
        q = poisson_sample_rate(k)
        assert int(1.0 / q) == k
        assert abs(q - 1.0 / k) < 1e-12
    assert poisson_steps_per_epoch(6, 4) == 2
    assert poisson_steps_per_epoch(3, 8) == 1
    with pytest.raises(ValueError, match="at least one"):
        poisson_steps_per_epoch(0, 8)


def test_poisson_loader_yields_empty_batches_of_the_right_shape(dataset) -> None:
    loader = make_poisson_loader(dataset, sample_rate=0.3, steps=12,
                                 generator=torch.Generator().manual_seed(0))
    assert len(loader) == 12
    sizes = []
    for batch in loader:
        assert isinstance(batch, Batch)
        assert batch.images.shape[1:] == (3, S, S) and batch.boxes.shape[1:] == (M, 4)
        assert batch.labels.shape[1:] == (M,) and batch.num_boxes.shape == (len(batch),)
        sizes.append(len(batch))
    assert 0 in sizes and max(sizes) > 0


def test_poisson_draws_have_the_binomial_mean(dataset) -> None:
    loader = make_poisson_loader(dataset, sample_rate=0.5, steps=400,
                                 generator=torch.Generator().manual_seed(1))
    sizes = torch.tensor([len(b) for b in loader], dtype=torch.float64)
    # Binomial(6, 0.5): mean 3, sd of the mean over 400 draws ~ 0.061.
    assert sizes.mean().item() == pytest.approx(3.0, abs=0.25)


def test_secret_generators_differ() -> None:
    a, b = secret_generator(), secret_generator()
    assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))

"""Shared fixtures for the training tests: small fast configs, one torch thread per test process."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def fast_cfg():
    """A RunConfig that trains an MLP on digits in well under a second per epoch."""
    from training.run_config import RunConfig

    return RunConfig(model="mlp", dataset="digits", epochs=2, batch_size=64, lr=5e-3, eval_chips=10,
                     val_chips=2, eval_batch_size=512, sigma=0.1, threads=1)

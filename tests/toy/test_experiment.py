import pytest

from pipeline.toy.experiment import ToyConfig


def test_toy_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown distribution"):
        ToyConfig(distribution="gauss")
    with pytest.raises(ValueError, match="latents must be a positive integer"):
        ToyConfig(latents=0)
    with pytest.raises(ValueError, match="n_eval .* must exceed latents"):
        ToyConfig(latents=5000, n_eval=5000)
    with pytest.raises(ValueError, match="aux_lr must be"):
        ToyConfig(aux_lr=float("nan"))

import pytest

from pipeline.toy.config import ToyConfig


def test_toy_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown distribution"):
        ToyConfig(distribution="gauss")
    with pytest.raises(ValueError, match="latents must be a positive integer"):
        ToyConfig(latents=0)
    with pytest.raises(ValueError, match="n_eval .* must exceed latents"):
        ToyConfig(latents=5000, n_eval=5000)
    with pytest.raises(ValueError, match="aux_lr must be"):
        ToyConfig(aux_lr=float("nan"))


def test_the_targets_are_the_ones_the_config_and_cli_offer_without_torch():
    from pipeline.toy.config import TARGET_NAMES
    from pipeline.toy.targets import TARGETS

    assert tuple(TARGETS) == TARGET_NAMES

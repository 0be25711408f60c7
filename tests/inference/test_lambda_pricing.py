"""Lambda's GB-second price follows the functions' architecture (LAMBDA_ARCHITECTURE), which
Terraform sets from infra.lambda_architecture; LAMBDA_USD_PER_GB_S stays an explicit override."""

from __future__ import annotations

import pytest

from inference.settings import (
    DEFAULTS,
    LAMBDA_USD_PER_GB_S,
    ChainDefaults,
    ChainSettings,
    SettingsError,
    settings_from_config,
)

ENV = {
    "INPUT_URI": "s3://data/incoming",
    "OUTPUT_URI": "s3://predictions/predictions",
    "REGISTRY_URI": "s3://registry",
    "LEDGER_URL": "sqlite://",
}


def test_price_table_is_the_us_east_1_list_prices() -> None:
    assert LAMBDA_USD_PER_GB_S == {"x86_64": 0.0000166667, "arm64": 0.0000133334}
    assert LAMBDA_USD_PER_GB_S["arm64"] / LAMBDA_USD_PER_GB_S["x86_64"] == pytest.approx(
        0.8, abs=1e-5
    )  # 20 % less


def test_default_is_x86_64() -> None:
    assert DEFAULTS.lambda_architecture == "x86_64"
    assert DEFAULTS.lambda_usd_per_gb_s == 0.0000166667


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_price_follows_the_architecture(arch) -> None:
    s = ChainSettings.from_env({**ENV, "LAMBDA_ARCHITECTURE": arch})
    assert s.lambda_usd_per_gb_s == LAMBDA_USD_PER_GB_S[arch]
    # 1024 MB for 100 s = 100 GB-s at the architecture's price, plus one request.
    assert s.lambda_cost_usd(100.0, 1024, invocations=1) == pytest.approx(
        100 * LAMBDA_USD_PER_GB_S[arch] + s.lambda_usd_per_request
    )
    assert s.to_env()["LAMBDA_ARCHITECTURE"] == arch
    assert ChainSettings.from_env(s.to_env()) == s


def test_explicit_price_overrides_the_table() -> None:
    s = ChainSettings.from_env({**ENV, "LAMBDA_ARCHITECTURE": "arm64", "LAMBDA_USD_PER_GB_S": "0.00001"})
    assert s.lambda_usd_per_gb_s == 0.00001
    assert ChainSettings.from_env(s.to_env()).lambda_usd_per_gb_s == 0.00001
    assert ChainDefaults(LAMBDA_USD_PER_GB_S=0.0).lambda_usd_per_gb_s == 0.0  # zero is a price, not unset


def test_unknown_architecture_fails_at_cold_start() -> None:
    with pytest.raises(SettingsError, match="LAMBDA_ARCHITECTURE"):
        ChainSettings.from_env({**ENV, "LAMBDA_ARCHITECTURE": "aarch64"})


def test_local_settings_follow_the_infra_config() -> None:
    from core.config import compose

    assert settings_from_config(compose()).lambda_architecture == compose().infra.lambda_architecture
    s = settings_from_config(compose(["infra.lambda_architecture=arm64", "infra.backend=onnx"]))
    assert (s.lambda_architecture, s.lambda_usd_per_gb_s, s.backend) == (
        "arm64",
        LAMBDA_USD_PER_GB_S["arm64"],
        "onnx",
    )


def test_bench_prices_and_names_the_architecture() -> None:
    from setup.tools.bench.__main__ import _lambda_cost

    cost = _lambda_cost(10.0, 512 * 2**20, cores=2)
    assert cost["architecture"] == DEFAULTS.lambda_architecture
    assert cost["usd_per_gb_s"] == LAMBDA_USD_PER_GB_S[cost["architecture"]]

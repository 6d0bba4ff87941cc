"""The shipped documents and examples stay true to the code."""

from pathlib import Path

from async_consumer.config import load_config
from async_consumer.reference import embed_in_readme, render_reference

REPO = Path(__file__).resolve().parent.parent


def test_the_ini_reference_page_matches_the_setting_definitions():
    page = (REPO / "docs" / "ini-reference.md").read_text()

    assert page == render_reference(), (
        "docs/ini-reference.md is stale: python -m async_consumer.reference --write"
    )


def test_the_readme_carries_the_current_ini_reference():
    readme = (REPO / "README.md").read_text()

    assert readme == embed_in_readme(readme), (
        "the README's INI reference is stale: python -m async_consumer.reference --write"
    )


def load_with_state_dir(text: str, directory: Path):
    """Load an example whose files live in /var/lib/async-consumer, moved to ``directory``."""
    ini = directory / "worker.ini"
    ini.write_text(text.replace("/var/lib/async-consumer", str(directory)))
    return load_config(ini)


def test_the_example_worker_ini_is_valid(tmp_path):
    config = load_with_state_dir((REPO / "deploy" / "worker.ini").read_text(), tmp_path)

    assert config.consumer.concurrency == 100
    assert config.logging.format == "json"


def test_the_readme_ini_example_is_valid(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = readme.split("```ini\n", 1)[1].split("```", 1)[0]

    config = load_with_state_dir(block, tmp_path)

    assert config.consumer.concurrency == 100

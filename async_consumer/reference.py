"""Renders the INI reference (docs/ini-reference.md) from the setting definitions.

``python -m async_consumer.reference --write`` regenerates the page and the copy in
the README; a test fails when either disagrees with the definitions.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .settings import SECTION_DESCRIPTIONS, SETTINGS

HEADER = """\
# INI reference

Generated from `async_consumer/settings.py`; do not edit by hand. Every section is
optional and every key has a default. `${VAR}` in a value reads the environment
variable `VAR` (`${VAR:-fallback}` gives a fallback, `$$` is a literal `$`).
Relative paths are resolved against the directory of the INI file.
"""


def render_reference() -> str:
    parts = [HEADER]
    for section in SETTINGS.sections():
        parts.append(f"\n## [{section}]\n\n{SECTION_DESCRIPTIONS.get(section, '')}\n")
        parts.append("\n| key | default | expected | meaning |\n|---|---|---|---|\n")
        for setting in SETTINGS.in_section(section):
            default = setting.default_text or "(empty)"
            scope = f" Only for type = {' or '.join(setting.providers)}." \
                if setting.providers else ""
            parts.append(
                f"| `{setting.key}` | `{default}` | {setting.expected} | "
                f"{setting.description}{scope} |\n"
            )
    parts.append(
        "\nA custom provider (`type = package.module:Class`) receives every other key of "
        "`[provider]` as a string option.\n"
    )
    return "".join(parts)


README_START = "<!-- ini-reference:start -->"
README_END = "<!-- ini-reference:end -->"


def embed_in_readme(readme: str) -> str:
    """The README text with the reference (one heading level down) between its markers."""
    body = render_reference().replace("\n## [", "\n### [").replace(
        "# INI reference\n", "## INI reference\n", 1
    )
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    return pattern.sub(lambda _: f"{README_START}\n{body}{README_END}", readme)


def write_documents(repo: Path) -> None:
    (repo / "docs" / "ini-reference.md").write_text(render_reference())
    readme = repo / "README.md"
    readme.write_text(embed_in_readme(readme.read_text()))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_documents(Path.cwd())
    else:
        sys.stdout.write(render_reference())

"""Renders the INI reference (docs/ini-reference.md) from the setting definitions.

``python -m async_consumer.reference > docs/ini-reference.md`` regenerates the page;
a test fails when the committed page and the definitions disagree.
"""

from __future__ import annotations

import sys

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
            parts.append(
                f"| `{setting.key}` | `{default}` | {setting.expected} | "
                f"{setting.description} |\n"
            )
    parts.append(
        "\nA custom provider (`type = package.module:Class`) receives every other key of "
        "`[provider]` as a string option.\n"
    )
    return "".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render_reference())

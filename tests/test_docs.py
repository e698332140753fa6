"""The manual covers the tool: every command and option has help text and is in docs/, the
reference is current, the README stays a landing page whose links lead somewhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from i2pscan.cli.app import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _commands():
    ctx = click.Context(cli)
    return [(name, cli.get_command(ctx, name)) for name in COMMANDS]


@pytest.mark.parametrize("name,command", _commands(), ids=list(COMMANDS))
def test_every_command_and_option_has_help_and_is_in_the_docs(name, command):
    docs = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    assert command.help and command.help.strip(), name
    assert f"i2pscan {name}" in docs
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help and param.help.strip(), (name, param.name)
            for flag in param.opts + param.secondary_opts:
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", docs), (name, flag)


def test_the_command_reference_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "docs_reference.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_the_readme_is_a_landing_page_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(((?:docs|benchmarks|examples)/[^)#]+)", readme)
    assert {"docs/scanning.md", "docs/review.md", "docs/method.md", "docs/commands.md"} <= set(links)
    assert [link for link in links if not (ROOT / link).exists()] == []
    for page in DOCS.glob("*.md"):
        for link in re.findall(r"\]\(([a-z-]+\.md)", page.read_text()):
            assert (DOCS / link).is_file(), (page.name, link)

"""Write docs/commands.md: every command's --help, as the command itself prints it.

    python tools/docs_reference.py           # rewrite docs/commands.md
    python tools/docs_reference.py --check   # exit 1 when docs/commands.md is out of date

tests/test_docs.py runs the check, so a command or option added without updating the reference
fails the tests (as sqlite-utils' docs test does).
"""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

from i2pscan.cli.app import COMMANDS, cli

DOCS = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
WIDTH = 100

HEADER = """# Command reference

Every command and option, as `i2pscan COMMAND --help` prints it (this file is written by
`python tools/docs_reference.py`; a test fails when it is out of date). The guides explain when to
use what: [scanning](scanning.md), [provenance and the report](provenance.md), [the review
page](review.md), [detectors](detectors.md), [the method](method.md), [Ray](ray.md).
"""


def help_text(args: list[str]) -> str:
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=WIDTH, prog_name="i2pscan")
    assert result.exit_code == 0, result.output
    return result.output.rstrip()


def reference() -> str:
    parts = [HEADER, "## i2pscan\n\n```text\n" + help_text([]) + "\n```\n"]
    for name in COMMANDS:
        parts.append(f"## i2pscan {name}\n\n```text\n" + help_text([name]) + "\n```\n")
    return "\n".join(parts)


def main() -> None:
    text = reference()
    if "--check" in sys.argv[1:]:
        if not DOCS.is_file() or DOCS.read_text() != text:
            sys.exit(f"{DOCS} is out of date: run python tools/docs_reference.py")
        return
    DOCS.write_text(text)
    print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()

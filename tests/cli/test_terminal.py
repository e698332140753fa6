"""What a terminal shows of a file's name or metadata is escaped (ls and git quote such names), and
newline-separated output never splits one name into several; reports, jsonl and -0 keep the bytes."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, PngImagePlugin

from i2pscan.render import scan_line
from i2pscan.terminal import terminal_text, visible
from i2pscan.report.schema import META_KEY, SCHEMA

SPOOF = "cat\r0.0100  real       cat.png\x1b[8m.png"  # \r rewrites the line; ESC[8m hides the rest
TITLE = "\x1b]0;pwned\x07\x1b[2J"  # sets the window title, clears the screen
A1111 = "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64, Model: sd15"


def _declared_ai(path):
    """A PNG whose text chunk holds AUTOMATIC1111 parameters: flagged by its metadata alone."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path, pnginfo=info)
    return path


def _no_raw_controls(text: str) -> bool:
    return not any(ch in text for ch in ("\r", "\x1b", "\x07", "\u202e"))


def test_names_and_metadata_are_escaped_and_quoted_only_when_unsafe():
    assert terminal_text("photo 1.png") == "photo 1.png"
    assert terminal_text(SPOOF) == '"cat\\r0.0100  real       cat.png\\x1b[8m.png"'
    assert terminal_text('odd\\name "x"\u202egnp.exe') == '"odd\\\\name \\"x\\"\\u202egnp.exe"'
    assert visible(f"cannot read {TITLE}") == "cannot read \\x1b]0;pwned\\x07\\x1b[2J"
    line = scan_line({"path": SPOOF, "score": 0.9, "verdict": "synthetic", "error": None, "provenance": "generated",
                      "generator": TITLE, "c2pa": "valid"})
    assert _no_raw_controls(line) and '"cat\\r0.0100' in line and "\\x1b]0;pwned" in line


def test_a_scan_table_shows_a_spoofing_name_escaped_and_the_report_keeps_it(tmp_path, run_cli, chdir):
    _declared_ai(tmp_path / "d" / f"{SPOOF}.png")
    r = run_cli("scan", "d", "--metadata-only", "-o", "r.parquet")
    assert r.exit_code == 1, r.stderr
    assert _no_raw_controls(r.stdout) and '"d/cat\\r0.0100  real       cat.png\\x1b[8m.png.png"' in r.stdout
    assert pq.read_table("r.parquet").column("path").to_pylist() == [f"d/{SPOOF}.png"]
    jsonl = run_cli("scan", "d", "--metadata-only", "--format", "jsonl", "-q")
    assert json.loads(jsonl.stdout)["path"] == f"d/{SPOOF}.png"


def test_report_summary_escapes_hostile_metadata(tmp_path, run_cli):
    rows = [{"path": f"x{TITLE}.png", "verdict": "synthetic", "score": 0.9, "provenance": "generated",
             "generator": TITLE}]
    table = pa.Table.from_pylist(rows, schema=pa.schema([SCHEMA.field(k) for k in rows[0]]))
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps({"detector_path": TITLE}).encode()}),
                   tmp_path / "r.parquet")
    r = run_cli("report", tmp_path / "r.parquet")
    assert r.exit_code == 0, r.stderr
    assert _no_raw_controls(r.stdout) and "\\x1b]0;pwned\\x07" in r.stdout


def test_errors_and_usage_errors_show_hostile_text_escaped(tmp_path, run_cli):
    from i2pscan.cli.app import main

    r = run_cli("scan", str(tmp_path / f"missing{TITLE}.png"))
    assert r.exit_code == 2 and _no_raw_controls(r.stderr) and "\\x1b]0;pwned" in r.stderr
    import subprocess
    import sys

    usage = subprocess.run([sys.executable, "-m", "i2pscan", "scan", "x.png", "--format", f"t{TITLE}"],
                           capture_output=True, text=True)
    assert usage.returncode == 2 and _no_raw_controls(usage.stderr) and "\\x1b]0;pwned" in usage.stderr
    assert callable(main)


def test_flagged_only_never_prints_a_name_with_a_newline_one_per_line(tmp_path, run_cli, chdir):
    _declared_ai(tmp_path / "d" / "x\nprecious.db\n.png")
    _declared_ai(tmp_path / "d" / "plain.png")
    r = run_cli("scan", "d", "--metadata-only", "--flagged-only", "-q")
    assert r.exit_code == 1
    assert r.stdout == "d/plain.png\n"  # `| xargs rm` cannot be told to remove ./precious.db
    assert r.stderr == ('warning: not printed: the flagged file "d/x\\nprecious.db\\n.png" has a newline in its '
                        'name, which newline-separated output cannot carry; use -0 for NUL-separated names\n')
    nul = run_cli("scan", "d", "--metadata-only", "--flagged-only", "-0", "-q")
    assert sorted(nul.stdout_bytes.split(b"\0")) == sorted([b"", b"d/plain.png", b"d/x\nprecious.db\n.png"])
    assert os.path.exists("d/x\nprecious.db\n.png")

"""Every text view of i2pscan, and the only module that imports rich. The library returns data; the
CLI hands it here to be shown.

Two consoles, as rich-cli does it: ``stdout`` for results a command was asked for (tables of
``info``, ``report``, ``evaluate``), ``stderr`` for logs, progress and summaries. Progress bars are
drawn only when stderr is a terminal; otherwise a plain line is logged every few seconds so that a
job's log file shows it is alive. ``showing(quiet)`` routes the library's log records and
progress here for the duration of a command.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from i2pscan import progress
from i2pscan.describe import file_rows
from i2pscan.terminal import terminal_text, visible


def _console(stderr: bool) -> Console:
    # A terminal gets rich's own width; a pipe or file gets wide lines rather than wrapped cells.
    width = None if os.environ.get("COLUMNS") else 200
    console = Console(stderr=stderr, highlight=False, soft_wrap=not stderr)
    if not console.is_terminal and width:
        console = Console(stderr=stderr, highlight=False, soft_wrap=not stderr, width=width)
    return console


stdout = _console(stderr=False)
stderr = _console(stderr=True)


# -- logs and progress -------------------------------------------------------------------------


_quiet: ContextVar[bool] = ContextVar("i2pscan_quiet", default=False)

def log(message: str) -> None:
    """A line on stderr (the CLI's own lines; the library logs through ``logging``); none when
    the command runs ``--quiet``."""
    if not _quiet.get():
        stderr.print(visible(message), markup=False, soft_wrap=True)


def alert(message: str) -> None:
    """A warning that ``--quiet`` does not silence: something the user asked for was not done."""
    stderr.print(f"warning: {visible(message)}", style="yellow", markup=False, soft_wrap=True)


def warn(message: str) -> None:
    if not _quiet.get():
        stderr.print(f"warning: {visible(message)}", style="yellow", markup=False, soft_wrap=True)


class _LogHandler(logging.Handler):
    """The ``i2pscan`` logger's records on stderr: warnings as ``warning: ...``, the rest plain."""

    def emit(self, record: logging.LogRecord) -> None:
        (warn if record.levelno >= logging.WARNING else log)(record.getMessage())


@contextmanager
def showing(quiet: bool = False) -> Iterator[None]:
    """Show the library's log lines and progress on stderr inside the block; ``quiet``: neither
    (errors are the CLI's to print)."""
    logger = logging.getLogger("i2pscan")
    handler = _LogHandler(level=logging.ERROR if quiet else logging.INFO)
    previous = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    token = _quiet.set(quiet)
    try:
        with progress.showing(None if quiet else progress_sink):
            yield
    finally:
        _quiet.reset(token)
        logger.removeHandler(handler)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]


class _Ticker:
    def __init__(self, update):
        self._update = update
        self.postfix = ""

    def advance(self, n: int = 1, postfix: str | None = None) -> None:
        if postfix is not None:
            self.postfix = postfix
        self._update(n, self.postfix)


@contextmanager
def progress_sink(total: int | None, description: str, every_s: float = 10.0) -> Iterator[_Ticker]:
    """A progress bar on a terminal, a line every ``every_s`` seconds elsewhere."""
    if stderr.is_terminal:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[postfix]}")]
        with Progress(*columns, console=stderr, transient=False) as bar:
            task = bar.add_task(description, total=total, postfix="")
            yield _Ticker(lambda n, p: bar.update(task, advance=n, postfix=p))
        return
    state = {"done": 0, "last": time.monotonic()}

    def update(n: int, postfix: str) -> None:
        state["done"] += n
        now = time.monotonic()
        if now - state["last"] >= every_s:
            state["last"] = now
            of = f"/{total}" if total else ""
            log(f"{description}: {state['done']}{of} {postfix}".rstrip())

    yield _Ticker(update)


# -- generic views -----------------------------------------------------------------------------


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]], to_stdout: bool = False) -> None:
    """Rows as an aligned table; numeric columns right-aligned; no header row when every column
    is unnamed (a key-value table)."""
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False,
              show_header=any(columns))
    for i, name in enumerate(columns):
        numeric = bool(rows) and all(_is_number(r[i]) for r in rows)
        t.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        t.add_row(*[terminal_text(_fmt(v)) for v in row])
    (stdout if to_stdout else stderr).print(t)


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], marks: Sequence[str] = (),
              width: int = 40, to_stdout: bool = False) -> None:
    """A horizontal bar per label; ``marks`` adds a note after each bar (e.g. "critical")."""
    console = stdout if to_stdout else stderr
    top = max(values) if values and max(values) > 0 else 1.0
    console.print(title, style="bold", markup=False)
    pad = max(len(lab) for lab in labels) if labels else 0
    for i, (label, value) in enumerate(zip(labels, values)):
        n = int(round(width * value / top))
        note = marks[i] if i < len(marks) else ""
        console.print(f"  {label:>{pad}} {'█' * n}{' ' * (width - n)} {value:6.3f} {note}".rstrip(), markup=False)


def _is_number(v: object) -> bool:
    if v is None or isinstance(v, (int, float)):
        return True
    try:
        float(str(v).replace(",", ""))
        return True
    except ValueError:
        return False


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


# -- calibrate and finetune --------------------------------------------------------------------


def calibration(cal) -> None:
    """The per-layer table, the importance chart and the critical layers, on stderr."""
    _layer_table(cal.per_layer(), cal.critical, cal.selection(), f"Layer importance ({cal.backbone['name']}, view "
                 f"{cal.view})", to_stdout=False)
    bar_chart("importance per block", [str(i + 1) for i in range(cal.num_blocks)], [float(w) for w in cal.importance],
              marks=["◀ S" if i + 1 in cal.critical else "" for i in range(cal.num_blocks)])
    counts = cal.sample.get("counts", {})
    later = (f"blocks {cal.last_block + 1}..{cal.num_blocks} will not run at scan time"
             if cal.last_block < cal.num_blocks else "all blocks needed")
    log(f"critical layers S = {cal.critical}; L* = {cal.last_block} ({later})")
    log(f"sample: {counts.get('real', 0)} real, {counts.get('fake', 0)} fake, "
        f"{len(cal.sample.get('skipped', []))} skipped")


def mask(m) -> None:
    """How many weights a mask tunes, per block, on stderr."""
    rows = [[b, t, e, t / e if e else 0.0] for b, (t, e) in m.per_block().items()]
    rows.append(["total", m.trainable, m.eligible, m.trainable / m.eligible if m.eligible else 0.0])
    table(f"tuned weights: {m.strategy}, rho {m.rho}, q {m.q}", ["block", "trainable", "eligible", "fraction"], rows)


# -- info and detectors ------------------------------------------------------------------------


def info(path: str, kind: str, meta: dict, as_json: bool = False) -> None:
    """What a detector or calibration file holds and how it was made, on stdout."""
    if as_json:
        import json

        stdout.print_json(json.dumps({"kind": kind, **meta}))
        return
    table(None, ["", ""], file_rows(path, kind, meta), to_stdout=True)
    if kind == "calibration":
        _layer_table(meta["per_layer"], meta["critical_layers"], meta.get("selection"), "per layer", to_stdout=True)


def _layer_table(per_layer: list[dict], critical, selection: dict | None, title: str, to_stdout: bool) -> None:
    """Per block: AUC, its leave-one-generator-out AUC and 95 % interval where calibrate measured them."""
    logo = any(r.get("logo_auc") is not None for r in per_layer)
    ci = any(r.get("auc_lo") is not None for r in per_layer)
    rows = [[r["block"], r["auc"]] + ([r.get("logo_auc")] if logo else [])
            + ([f"{r['auc_lo']:.4f}-{r['auc_hi']:.4f}" if r.get("auc_lo") is not None else "–"] if ci else [])
            + [r["accuracy"], r["fisher"], r["importance"], "critical" if r["block"] in critical else ""]
            for r in per_layer]
    columns = ["block", "AUC"] + ["LOGO AUC"] * logo + ["95% CI"] * ci + ["accuracy", "Fisher", "importance", ""]
    table(title, columns, rows, to_stdout=to_stdout)
    again = (f"; S came back in {selection['stability']:.0%} of {selection['resamples']} bootstrap resamples"
             if selection and selection["resamples"] else "")
    if selection:
        (stdout if to_stdout else stderr).print(f"layers ranked by {selection['ranked_by']} AUC{again}", soft_wrap=True)


def detectors(shipped: list[tuple[str, dict]], default: str) -> None:
    """The shipped detectors (name, what, licence, backbone), on stdout."""
    rows = []
    for name, meta in shipped:
        card, bb = meta["published"], meta["backbone"]
        rows.append([name + (" (default)" if name == default else ""), card.get("title", ""), card["licence"],
                     f"{bb['name']} {bb['pretrained']}"])
    table(None, ["name", "detector", "licence", "backbone"], rows, to_stdout=True)


# -- scans and reports -------------------------------------------------------------------------


def scan_line(row: dict) -> str:
    """``score  verdict  path`` (or ``-  error  path: message``), aligned for reading; a file its
    metadata flagged ends with why (its ``reason``; a score above the threshold speaks for itself)."""
    declared = row.get("provenance")
    note = ""
    if declared not in (None, "none"):
        note = f"  [{terminal_text(declared)}" + (f": {terminal_text(row['generator'])}" if row.get("generator")
                                                   else "") + \
               (f", c2pa {terminal_text(row['c2pa'])}" if row.get("c2pa") else "") + "]"
    elif row.get("c2pa"):
        note = f"  [c2pa {terminal_text(row['c2pa'])}]"
    score = f"{row['score']:6.4f}" if row.get("score") is not None else f"{'-':>6}"
    problem = f": {visible(row['error'])}" if row.get("error") else ""
    why = (f"  ({visible(row['reason'])})" if row.get("flagged_by") in ("metadata", "both") and row.get("reason")
           else "")
    return f"{score}  {row['verdict']:<9}  {terminal_text(row['path'])}{problem}{note}{why}"


def scan_summary(summary, report: str | None = None) -> str:
    """The one-line summary of a scan run: what was flagged and by what, what could not be read."""
    from i2pscan.errors import short_path

    by = summary.flagged_by
    if summary.threshold is None:
        why = "by their metadata"
    else:
        parts = [f"{n} by {what}" for what, n in (("the model", by.get("model", 0)),
                                                   ("their metadata alone", by.get("metadata", 0)),
                                                   ("both", by.get("both", 0))) if n]
        why = f"(threshold {summary.threshold:.4f}" + (f"; {', '.join(parts)})" if parts else ")")
    text = (f"{summary.files} file(s) scanned in {summary.seconds:.1f} s ({summary.images_per_second:.1f}/s): "
            f"{summary.flagged} flagged as synthetic {why}, {summary.errors} unreadable")
    if summary.not_scorable:
        kinds = ", ".join(f"{n} {fmt}" for fmt, n in sorted(summary.not_scorable.items(), key=lambda kv: (-kv[1], kv[0])))
        text += f" ({sum(summary.not_scorable.values())} of them in formats no detector scores: {kinds})"
    if summary.skipped_done:
        text += f"; {summary.skipped_done} already in the report"
    return text + (f"; report: {short_path(report)}" if report else "")


def report_summary(path: str, s) -> None:
    """Counts, the detector, and the top flagged files of a report, on stdout."""
    meta = s.meta
    det = meta.get("detector", {})
    detector = ("none (--metadata-only)" if meta.get("options", {}).get("metadata_only") else
                f"{meta.get('detector_path', '?')} ({str(meta.get('detector_id', '?'))[:12]}…), "
                f"{det.get('backbone', {}).get('name', '?')}")
    rows = [["report", path], ["files", s.files], ["flagged as synthetic", s.synthetic], ["real", s.real],
            ["unreadable", s.errors], ["detector", detector],
            ["scanned", f"{meta.get('started', '?')} to {meta.get('finished', '?')} with i2pscan "
                        f"{meta.get('i2pscan_version', '?')}"]]
    if s.unknown:
        rows.insert(4, ["unknown (metadata only)", s.unknown])
    table(None, ["", ""], rows, to_stdout=True)
    if s.by_provenance is not None:
        table("by provenance", ["provenance", "files"],
              [[k if k is not None else "(unread)", v] for k, v in s.by_provenance.items()], to_stdout=True)
    if s.by_generator:
        table("by generator (from metadata)", ["generator", "files"], [[k, v] for k, v in s.by_generator.items()],
              to_stdout=True)
    if s.by_flagged_by:
        table("flagged by", ["what", "files"], [[k, v] for k, v in s.by_flagged_by.items()], to_stdout=True)
    if s.top:
        with_reason = any(r.get("reason") for r in s.top)
        table(f"top {len(s.top)} flagged", ["score", "path"] + (["why"] if with_reason else []),
              [[r["score"], r["path"]] + ([r.get("reason") or ""] if with_reason else []) for r in s.top],
              to_stdout=True)


# -- evaluate ----------------------------------------------------------------------------------

_SHOWN = ("subset", "n_real", "n_fake", "errors", "acc_real", "acc_fake", "acc", "fpr", "acc_05", "ap", "auc",
          "oracle_acc", "tpr_at_fpr_1", "tpr_at_fpr_5", "tpr_at_target", "ai_meta", "acc_no_meta")


def evaluation(result, clean: str = "none") -> None:
    """An evaluation's tables, one per perturbation, on stdout."""
    import math

    from i2pscan.evaluate import HEADERS

    def cell(v, key=""):
        return (None if math.isnan(v) else f"{v:.3g}" if key == "drift" else f"{v:.3f}") if isinstance(v, float) else v

    shown = (("detector",) if result.rows and "detector" in result.rows[0] else ()) + _SHOWN
    shown += ("drift",) * any(not math.isnan(r.get("drift", math.nan)) for r in result.rows)
    for perturbation in dict.fromkeys(r["perturbation"] for r in result.rows):
        rows = [r for r in result.rows if r["perturbation"] == perturbation]
        title = "evaluation" + ("" if perturbation == clean else f" under {perturbation}")
        table(title, [HEADERS[k] for k in shown], [[cell(r[k], k) for k in shown] for r in rows], to_stdout=True)

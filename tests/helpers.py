"""Plain helpers the tests share (fixtures live in conftest.py): the shared corpora, images and
files made on the fly, report rows, tampered detector files."""

from __future__ import annotations

from pathlib import Path

def _corpora() -> Path:
    """../shared/corpora beside the repository (for a git worktree: beside the main checkout)."""
    repo = Path(__file__).resolve().parents[1]
    candidates = [repo.parent / "shared" / "corpora"]
    git = repo / ".git"
    if git.is_file():  # a worktree: .git names the main repository's git folder
        text = git.read_text().strip()
        if text.startswith("gitdir:"):
            main_git = (repo / text.split(":", 1)[1].strip()).resolve()
            candidates.append(main_git.parents[3] / "shared" / "corpora")  # <main>/.git/worktrees/<name>
    return next((c for c in candidates if c.is_dir()), candidates[0])


CORPORA = _corpora()


def noise_image(path: Path, seed: int = 0, size: int = 72, width: int | None = None) -> Path:
    """A PNG (or whatever the suffix says) of uniform noise, size x width pixels (square by default)."""
    import numpy as np

    from i2pscan.io.pixels import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size, width or size, 3), dtype=np.uint8)
    save_image(rgb, path)
    return path


def files_the_authors_read_differently(folder: Path) -> list[Path]:
    """A JPEG with EXIF orientation 6 (their code ignores it) and an RGBA PNG (their code drops
    alpha): i2pscan's own decoding would turn the first and composite the second on white."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    rotated, alpha = folder / "e-rotated.jpg", folder / "f-alpha.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(rotated, exif=exif, quality=95)
    Image.fromarray(rng.integers(0, 255, (230, 250, 4), dtype=np.uint8), "RGBA").save(alpha)
    return [rotated, alpha]


def report_rows(report) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(report).to_pylist()


def write_corrupt_files(folder: Path) -> list[Path]:
    """A truncated JPEG, an empty file, a text file named .png; returns their paths."""
    from i2pscan.io.pixels import save_image
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "_good.jpg"
    save_image(np.full((64, 64, 3), 127, np.uint8), good)
    data = good.read_bytes()
    good.unlink()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    text = folder / "notes.png"
    text.write_text("this is not an image\n")
    return [truncated, empty, text]


def tamper_detector(src, dst, meta_edit=None, tensor_edit=None):
    """Copy a detector file with its metadata and/or tensors edited in place by the callbacks."""
    from i2pscan.model import tensorfile

    kind, meta, tensors = tensorfile.read(src, ("detector",))
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    tensorfile.write(dst, kind, tensors, meta)
    return dst


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, already dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False

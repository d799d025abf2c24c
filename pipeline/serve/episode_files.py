"""A user's few-shot episode read from files: images (folders of class sub-folders, image files,
base64 strings) decoded like the run's data, and regression CSVs. Every problem is a one-line
`ConfigError` raised before anything is adapted or written; harmless differences (another image
size or channel count) are converted and counted in `notes`."""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import ConfigError
from tasks.images import decoder, pixels_to_float


class ImageReader:
    """Decodes images as the run's data loader does (`tasks.images.decoder`: PIL, grey or RGB,
    LANCZOS resize, Omniglot inversion) and counts what it had to change."""

    def __init__(self, size: int, channels: int, invert: bool):
        self.size, self.channels = size, channels
        self.decode = decoder(size, channels, invert)
        self.notes: Counter = Counter()

    def read(self, data: bytes, name: str, what: str) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()  # reads the whole file: truncated or corrupt images fail here
            with Image.open(io.BytesIO(data)) as im:
                size, bands = im.size, len(im.getbands())
            pixels = self.decode(data)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ConfigError(f"{what}: {name} is not an image ({type(e).__name__})") from None
        if size != (self.size, self.size):
            self.notes[f"resized from {size[0]}x{size[1]} to {self.size}x{self.size} like the run's data"] += 1
        if self.channels == 1 and bands not in (1, 2):
            self.notes["converted from colour to grey (the run's images have 1 channel)"] += 1
        if self.channels == 3 and bands in (1, 2):
            self.notes["converted from grey to RGB (the run's images have 3 channels)"] += 1
        return pixels

    def note_lines(self) -> list[str]:
        return [f"note: {n} image(s) {text}" for text, n in sorted(self.notes.items())]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_support_folder(root: str, reader: ImageReader, ways: int) -> tuple[np.ndarray, list[str]]:
    """`<root>/<class>/<image>`: images (n, C, H, W) in [0, 1] and the class name of each."""
    path = Path(root)
    if not path.is_dir():
        raise ConfigError(f"--support: {root} is not a folder of class sub-folders")
    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"--support: {root} has no class sub-folders (one folder of images per class)")
    if len(classes) > ways:
        raise ConfigError(f"--support: {len(classes)} class folders, but the run's model is {ways}-way "
                          f"(its head has {ways} outputs)")
    images, labels = [], []
    for folder in classes:
        files = _files(folder)
        if not files:
            raise ConfigError(f"--support: class folder {folder} is empty")
        for f in files:
            images.append(reader.read(f.read_bytes(), str(f), "--support"))
            labels.append(folder.name)
    return pixels_to_float(np.stack(images)), labels


def read_query_images(sources: list[str], reader: ImageReader) -> tuple[np.ndarray, list[str]]:
    """Image files and folders of image files: images (n, C, H, W) in [0, 1] and their paths."""
    files = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            files.extend(_files(p))
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"--query: {s} does not exist")
    if not files:
        raise ConfigError(f"--query: no image files in {', '.join(sources)}")
    images = [reader.read(f.read_bytes(), str(f), "--query") for f in files]
    return pixels_to_float(np.stack(images)), [str(f) for f in files]


def read_csv_columns(path: str, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """A CSV with (at least) the given numeric columns, one row per example."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what}: {path} is not a file (a regression run takes a CSV with columns "
                          f"{', '.join(columns)})")
    try:
        table = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{what}: {path} is not a readable CSV ({reason})") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        present = ", ".join(table.columns) or "none"
        raise ConfigError(f"{what}: {path} has no column {missing[0]!r} (columns: {present}; "
                          f"expected {', '.join(columns)})")
    if table.empty:
        raise ConfigError(f"{what}: {path} has no rows")
    out = table[list(columns)].apply(pd.to_numeric, errors="coerce")
    bad = out.isna().any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ConfigError(f"{what}: {path} row {row + 2} is not numeric in {', '.join(columns)}")
    return out

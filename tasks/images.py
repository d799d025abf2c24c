"""Image data for few-shot classification: one in-memory form, `ImageSet`, read from image folders,
zip archives or a packed Arrow IPC file, and the N-way K-shot sampler shared by every image task.

An ImageSet is uint8 images (n, H, W, C) plus, per image, its class name and group (the Omniglot
alphabet, or the miniImageNet split). Packed files hold exactly that: columns `image`
(fixed_size_binary, H*W*C bytes, one record batch), `class` and `group`, and the image shape in the
schema metadata. Workers memory-map them: the pixels are read straight from the page cache, so a
node holds one copy however many workers sample from it.
"""
from __future__ import annotations

import functools
import io
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.errors import ConfigError
from tasks.sampling import Streams, class_labels

PACK_FORMAT = "metatrain-images-v1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ArrayImages:
    """Decoded images held in (or memory-mapped into) one uint8 array (n, H, W, C)."""

    def __init__(self, array: np.ndarray, owner=None):
        self.array, self._owner = array, owner  # owner keeps a memory map alive

    def __len__(self) -> int:
        return len(self.array)

    def take(self, indices: np.ndarray) -> np.ndarray:
        return self.array[indices]


class FileImages:
    """Images decoded on first use from their files (a large folder data set), with a bounded
    cache. `metatrain data pack` turns such a set into an Arrow file that needs no decoding."""

    def __init__(self, paths: list[str], decode, cache_size: int = 20000):
        self.paths, self._decode = paths, decode
        self._load = functools.lru_cache(maxsize=cache_size)(self._read)

    def _read(self, i: int) -> np.ndarray:
        return read_image(Path(self.paths[i]).read_bytes, self._decode, self.paths[i])

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, indices: np.ndarray) -> np.ndarray:
        return np.stack([self._load(int(i)) for i in indices])


@dataclass
class ImageSet:
    images: ArrayImages | FileImages
    classes: np.ndarray  # (n,) str: class name of each image
    groups: np.ndarray  # (n,) str: alphabet (Omniglot) or split (miniImageNet) of each image
    shape: tuple[int, int, int]  # (H, W, C)
    source: str = ""

    def class_index(self) -> dict[str, np.ndarray]:
        """class name -> indices of its images, classes in sorted order (deterministic)."""
        order = np.argsort(self.classes, kind="stable")
        names, starts = np.unique(self.classes[order], return_index=True)
        return {str(n): idx for n, idx in zip(names, np.split(order, starts[1:]))}

    def group_of(self) -> dict[str, str]:
        return {str(c): str(g) for c, g in zip(self.classes, self.groups)}


def decoder(size: int, channels: int, invert: bool):
    """bytes -> uint8 (size, size, channels): PIL decode, grey or RGB, resize, optional inversion."""

    def decode(data: bytes) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("L" if channels == 1 else "RGB").resize((size, size), Image.LANCZOS)
            a = np.asarray(im, dtype=np.uint8)
        a = a.reshape(size, size, channels)
        return 255 - a if invert else a

    return decode


def _brief(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def read_image(read, decode, where: str) -> np.ndarray:
    """One image file read and decoded; any failure is a one-line ConfigError naming the file."""
    try:
        data = read()
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as e:  # unreadable file, corrupt zip member
        raise ConfigError(f"task.data: {where} cannot be read ({_brief(e)})") from None
    try:
        return decode(data)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a broken image; all mean "bad file"
        raise ConfigError(f"task.data: {where} is not a readable image ({_brief(e)})") from None


def _entries(root: Path):
    """(name for messages, relative parts, bytes reader) of every image under a folder or inside a
    zip archive."""
    if (root.is_file() and root.suffix.lower() == ".zip") or zipfile.is_zipfile(root):
        try:
            zf = zipfile.ZipFile(root)
            names = zf.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:  # truncated: no central directory
            raise ConfigError(f"task.data: {root} is not a readable zip archive, truncated or corrupt "
                              f"({_brief(e)})") from None
        for name in sorted(names):
            if name.lower().endswith(IMAGE_SUFFIXES):
                yield f"{root}:{name}", tuple(name.split("/")), functools.partial(zf.read, name)
    elif root.is_dir():
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                yield str(p), p.relative_to(root).parts, p.read_bytes
    else:
        raise ConfigError(f"task.data: {root} is neither a folder, a zip archive nor a packed .arrow file")


def read_alphabets(roots: list[str], size: int, invert: bool = True) -> ImageSet:
    """Omniglot layout `<root>/<Alphabet>/<characterNN>/<drawer>.png`, from folders or zips (a zip may
    wrap it in one top folder). A character present in several roots is read once."""
    decode, seen, images, classes, groups = decoder(size, 1, invert), set(), [], [], []
    for root in roots:
        for where, parts, read in _entries(Path(root)):
            if len(parts) < 3:
                continue
            alphabet, character, filename = parts[-3:]
            key = (alphabet, character, filename)
            if key in seen:
                continue
            seen.add(key)
            images.append(read_image(read, decode, where))
            classes.append(f"{alphabet}/{character}")
            groups.append(alphabet)
    if not images:
        raise ConfigError(f"task.data: no <Alphabet>/<character>/*.png images found in {', '.join(map(str, roots))}")
    order = np.lexsort((np.arange(len(classes)), np.array(classes)))  # by class, then reading order
    return ImageSet(ArrayImages(np.stack(images)[order]), np.array(classes)[order], np.array(groups)[order],
                    (size, size, 1), ", ".join(map(str, roots)))


def read_class_folders(root: str, split_dir: str, size: int) -> ImageSet:
    """miniImageNet layout: `<root>/<class>/<file>` (or `<root>/images/<file>`) and split CSVs
    `<split_dir>/{train,val,test}.csv` with a header and rows `filename,label`. Decoded lazily."""
    root_p, split_p = Path(root), Path(split_dir or root)
    paths, classes, groups, split_of = [], [], [], {}
    for split in ("train", "val", "test"):
        csv = split_p / f"{split}.csv"
        if not csv.is_file():
            raise ConfigError(f"task.split_dir: no {split}.csv in {split_p} (expected the standard split CSVs, "
                              "rows filename,label)")
        try:
            lines = [l.strip() for l in csv.read_text().splitlines() if l.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"task.split_dir: {csv} is not a readable text CSV ({_brief(e)})") from None
        for line in lines[1:] if lines and lines[0].lower().startswith("filename") else lines:
            if line.count(",") < 1:
                raise ConfigError(f"task.split_dir: {csv}: expected rows filename,label, got {line[:80]!r}")
            filename, label = (s.strip() for s in line.split(",")[:2])
            path = root_p / label / filename
            if not path.is_file():
                path = root_p / "images" / filename
            if not path.is_file():
                raise ConfigError(f"task.data: {filename} of class {label} ({csv.name}) is neither in "
                                  f"{root_p / label} nor in {root_p / 'images'}")
            if split_of.setdefault(label, split) != split:
                raise ConfigError(f"task.split_dir: class {label} is in both {split_of[label]}.csv and {split}.csv; "
                                  "the splits must not share a class")
            paths.append(str(path))
            classes.append(label)
            groups.append(split)
    order = np.lexsort((np.arange(len(classes)), np.array(classes)))
    return ImageSet(FileImages([paths[i] for i in order], decoder(size, 3, invert=False)),
                    np.array(classes)[order], np.array(groups)[order], (size, size, 3), str(root_p))


def read_plain_class_folders(root: str, size: int) -> ImageSet:
    """`<root>/<class>/<file>` with no split CSVs (every class a test class): decoded lazily."""
    root_p = Path(root)
    paths, classes = [], []
    for folder in sorted(p for p in root_p.iterdir() if p.is_dir()):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(f))
                classes.append(folder.name)
    if not paths:
        raise ConfigError(f"task.data: no <class>/<image> files in {root_p}")
    return ImageSet(FileImages(paths, decoder(size, 3, invert=False)), np.array(classes),
                    np.array(["test"] * len(classes)), (size, size, 3), str(root_p))


def pack(images: ImageSet, out: Path, dataset: str, log=print) -> Path:
    """Write an ImageSet as an Arrow IPC file (one record batch), atomically."""
    import pyarrow as pa

    h, w, c = images.shape
    n = len(images.images)
    data = np.empty((n, h, w, c), dtype=np.uint8)
    for start in range(0, n, 2000):  # decode lazily-read sets in bounded steps, with progress
        idx = np.arange(start, min(start + 2000, n))
        data[idx] = images.images.take(idx)
        log(f"packing {dataset}: {idx[-1] + 1}/{n} images")
    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(h * w * c), n, [None, pa.py_buffer(data.reshape(-1))])
    table = pa.table({"image": column, "class": pa.array(images.classes.astype(str)),
                      "group": pa.array(images.groups.astype(str))})
    meta = {"format": PACK_FORMAT, "dataset": dataset, "height": str(h), "width": str(w), "channels": str(c),
            "source": images.source}
    table = table.replace_schema_metadata(meta)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(n, 1))
    tmp.replace(out)
    return out


def read_packed(path: str, dataset: str, size: int) -> ImageSet:
    """Memory-map a packed file: no pixel is copied until a task takes it."""
    import pyarrow as pa

    try:
        source = pa.memory_map(str(path), "r")
        table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as e:  # truncated (no footer) or not Arrow at all
        raise ConfigError(f"task.data: {path} is not a readable Arrow file, truncated or corrupt ({_brief(e)}); "
                          "pack it again with `metatrain data pack`") from None
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    missing = [c for c in ("image", "class", "group") if c not in table.column_names]
    missing += [k for k in ("dataset", "height", "width", "channels") if k not in meta]
    if meta.get("format") != PACK_FORMAT or missing:
        raise ConfigError(f"task.data: {path} is not a file written by `metatrain data pack`")
    if meta["dataset"] != dataset:
        raise ConfigError(f"task.data: {path} holds {meta['dataset']} images, not {dataset}")
    h, w, c = int(meta["height"]), int(meta["width"]), int(meta["channels"])
    if (h, w) != (size, size):
        raise ConfigError(f"task.image_size: {path} was packed at {h}x{w}; set task.image_size: {h} or pack again")
    column = table.column("image").combine_chunks() if table.column("image").num_chunks != 1 else \
        table.column("image").chunk(0)
    pixels = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=len(column) * h * w * c,
                           offset=column.offset * h * w * c).reshape(len(column), h, w, c)
    return ImageSet(ArrayImages(pixels, owner=(source, table)),
                    np.array(table.column("class").to_pylist()), np.array(table.column("group").to_pylist()),
                    (h, w, c), meta.get("source", str(path)))


class FewShotImages:
    """N-way K-shot tasks over a split's classes. A class is (base class, k): the images of the
    base class rotated by k * 90 degrees (k = 0 only, without rotations).

    Per task: N distinct classes, labelled 0..N-1 in the order drawn; per class one permutation of
    its images, the first `query` of which form the query set and the next `shots` the support
    set, so a task and its query set stay the same whatever K is."""

    loss = "cross_entropy"

    def __init__(self, images: ImageSet, splits: dict[str, list[str]], ways: int, rotations: bool,
                 within_group: bool = False, device_cache_gb: float = 0.0, *, test_rotations: bool = True,
                 augment: str = "none"):
        self.images, self.ways, self.rotations, self.within_group = images, ways, rotations, within_group
        self.augment = augment  # "affine": training images distorted (task.augment)
        self.device_cache = device_cache_gb * 2**30  # bytes of images a torch device may hold (task.device_cache_gb)
        self._cache = {}  # per split and device: index tables; per device: the images held there
        self.channels, self.image_size = images.shape[2], images.shape[0]
        index = images.class_index()
        self._index = index
        turned = {s: rotations and (s == "train" or test_rotations) for s in splits}  # task.test_rotations
        self.splits = {s: [(c, k) for c in names for k in (range(4) if turned[s] else (0,))]
                       for s, names in splits.items()}
        self.min_images = {s: min((len(index[c]) for c in names), default=0) for s, names in splits.items()}
        self.max_images = {s: max((len(index[c]) for c in names), default=0) for s, names in splits.items()}
        self.shape = (self.channels, self.image_size, self.image_size)
        # within_group: per split, the positions (in self.splits[s]) of each group's classes, groups in
        # name order; only groups with at least `ways` classes can hold a task.
        group = images.group_of()
        self.groups = {}
        for s, classes in self.splits.items():
            members: dict[str, list[int]] = {}
            for i, (name, _) in enumerate(classes):
                members.setdefault(group[name], []).append(i)
            self.groups[s] = {g: np.array(m) for g, m in sorted(members.items())}

    def check(self, *, split: str, shots: int, query: int, key: str = "task.shots") -> None:
        """One-line errors for tasks this data cannot provide (before any Ray work starts)."""
        classes = self.splits.get(split, [])
        if len(classes) < self.ways:
            raise ConfigError(f"task.ways: {self.ways}-way tasks need {self.ways} classes; the {split} split has "
                              f"{len(classes)}")
        if self.within_group and not self.eligible_groups(split):
            largest = max((len(m) for m in self.groups.get(split, {}).values()), default=0)
            raise ConfigError(f"task.within_group: {self.ways}-way tasks within one group (alphabet) need a group of "
                              f"{self.ways} classes; the largest in the {split} split has {largest}")
        if shots + query > self.min_images[split]:
            raise ConfigError(f"{key}: K={shots} support + {query} query (task.query) images per class, but a {split} "
                              f"class has only {self.min_images[split]} images")

    def sample(self, streams: Streams, shots: int, query: int, split: str = "train") -> dict:
        xp, ways, n = streams.xp, self.ways, streams.n
        table, counts, rotation = self._tables(split, streams.device)
        # Every draw as arrays over the batch; a random choice or permutation = argsort of uniforms
        # (keys of 2.0 pad shorter rows: they sort last, so a row's order is its own keys' order).
        if self.within_group:  # a group uniformly among those that can hold a task, then N of its classes
            members, sizes = self._group_tables(split, streams.device)
            group = streams.integers(len(sizes))
            keys = streams.random(members.shape[1])
            keys = xp.where(xp.arange(members.shape[1], device=streams.device) < sizes[group][:, None], keys, 2.0)
            chosen = xp.take_along_axis(members[group], xp.argsort(keys, axis=1, stable=True)[:, :ways], axis=1)
        else:
            chosen = xp.argsort(streams.random(len(self.splits[split])), axis=1, stable=True)[:, :ways]
        keys = streams.random((ways, self.max_images[split]))  # per drawn class, its images' order
        keys = xp.where(xp.arange(keys.shape[2], device=streams.device) < counts[chosen][..., None], keys, 2.0)
        order = xp.argsort(keys, axis=2, stable=True)[..., :query + shots]
        ids = xp.take_along_axis(table[chosen], order, axis=2)  # (n, ways, query + shots) image numbers
        k = rotation[chosen]

        def images(part):  # (n, ways, m) image numbers -> float (n, ways * m, C, H, W), rotated per class
            x = self._take(part, streams.device)  # (n, ways, m, H, W, C) uint8
            if isinstance(x, torch.Tensor) and x.shape[3] == x.shape[4]:
                # square images on a torch device: every class's turn selected elementwise, with no
                # branch on the data, so that a compiled population step traces the draw whole
                per_class = k[:, :, None, None, None, None]
                for turns in (1, 2, 3):
                    x = torch.where(per_class == turns, torch.rot90(x, turns, dims=(3, 4)), x)
            else:
                for turns in (1, 2, 3):
                    turned = k == turns
                    if bool(xp.any(turned)):
                        x[turned] = _rot90(x[turned], turns)
            return pixels_to_float(xp.reshape(x, (-1, *x.shape[3:]))).reshape(n, -1, *self.shape)

        x_support, x_query = images(ids[..., query:]), images(ids[..., :query])
        if self.augment == "affine" and split == "train":  # query images' draws first: they stay whatever K is
            x_query = affine_distort(x_query, streams.random((ways * query, 7)))
            x_support = affine_distort(x_support, streams.random((ways * shots, 7)))
        return {"x_support": x_support, "y_support": class_labels(streams, ways, shots),
                "x_query": x_query, "y_query": class_labels(streams, ways, query)}

    def _on(self, device, key: tuple, build):
        """Arrays built once (`build()`: numpy arrays) and kept per device: as they are for numpy
        streams, as tensors on a torch device."""
        key = (*key, None if device is None else str(device))
        if key not in self._cache:
            self._cache[key] = tuple(a if device is None else torch.as_tensor(a, device=device) for a in build())
        return self._cache[key]

    def _tables(self, split: str, device):
        """Per class of the split (in self.splits order): its image numbers padded to the longest
        (C, max images), their count (C,) and its rotation (C,)."""
        def build():
            classes = self.splits[split]
            counts = np.array([len(self._index[name]) for name, _ in classes], np.int64)
            table = np.zeros((len(classes), max(self.max_images[split], 1)), np.int64)
            for i, (name, _) in enumerate(classes):
                table[i, :counts[i]] = self._index[name]
            return table, counts, np.array([k for _, k in classes], np.int64)
        return self._on(device, ("classes", split), build)

    def _group_tables(self, split: str, device):
        """The eligible groups' class positions padded to the largest (G, max classes), their sizes (G,)."""
        def build():
            groups = self.eligible_groups(split)
            members = np.zeros((len(groups), max(len(m) for m in groups)), np.int64)
            for i, m in enumerate(groups):
                members[i, :len(m)] = m
            return members, np.array([len(m) for m in groups], np.int64)
        return self._on(device, ("groups", split), build)

    def _take(self, ids, device):
        """uint8 images of the image numbers `ids` (any shape), gathered where the ids are: on a torch
        device from a copy of every image held there when it fits task.device_cache_gb, else read
        on the CPU and copied over."""
        if device is None:
            return self.images.images.take(ids.reshape(-1)).reshape(*ids.shape, *self.images.shape)
        images = self.images.images
        if isinstance(images, ArrayImages) and images.array.nbytes <= self.device_cache:
            held, = self._on(device, ("images",), lambda: (np.ascontiguousarray(images.array),))
            return held[ids]
        flat = self.images.images.take(ids.reshape(-1).cpu().numpy())
        return torch.as_tensor(flat, device=device).reshape(*ids.shape, *self.images.shape)

    def eligible_groups(self, split: str) -> list[np.ndarray]:
        return [m for m in self.groups.get(split, {}).values() if len(m) >= self.ways]



def affine_distort(x, u):
    """Images x (n, m, C, H, W) in [0, 1], each through its own random affine map (Koch et al. 2015's
    distortions), from uniforms u (n, m, 7) in [0, 1): rotation +-10 degrees, shears +-0.3, scales
    0.8-1.2 and shifts +-2 pixels per axis. The map is the sampling grid's (output -> input pixel),
    bilinear, zero (background) outside the image. numpy in, numpy out; torch on x's device."""
    as_numpy = not isinstance(x, torch.Tensor)
    t = torch.from_numpy(x) if as_numpy else x
    u = torch.as_tensor(u, device=t.device).to(torch.float32)
    n, m, c, h, w = t.shape
    angle = (u[..., 0] * 2 - 1) * (math.pi / 18)
    shear_x, shear_y = (u[..., 1] * 2 - 1) * 0.3, (u[..., 2] * 2 - 1) * 0.3
    scale_x, scale_y = 0.8 + 0.4 * u[..., 3], 0.8 + 0.4 * u[..., 4]
    shift_x, shift_y = (u[..., 5] * 2 - 1) * 2 * 2 / w, (u[..., 6] * 2 - 1) * 2 * 2 / h  # pixels -> [-1, 1] units
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotate = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear = torch.stack([torch.stack([torch.ones_like(shear_x), shear_x], -1),
                         torch.stack([shear_y, torch.ones_like(shear_y)], -1)], -2)
    linear = rotate @ shear @ torch.diag_embed(torch.stack([scale_x, scale_y], -1))
    theta = torch.cat([linear, torch.stack([shift_x, shift_y], -1)[..., None]], -1).reshape(n * m, 2, 3)
    flat = t.reshape(n * m, c, h, w)
    grid = torch.nn.functional.affine_grid(theta, list(flat.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros",
                                          align_corners=False).reshape(t.shape)
    return out.numpy() if as_numpy else out


def pixels_to_float(x):
    """Decoded uint8 images (n, H, W, C) as the learner's input: float32 NCHW in [0, 1]."""
    if isinstance(x, torch.Tensor):
        return x.permute(0, 3, 1, 2).to(torch.float32).contiguous() / 255.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0


def _rot90(x, turns: int):
    """Images (m, s, H, W, C) turned by turns * 90 degrees in the (H, W) plane, as np.rot90."""
    if isinstance(x, torch.Tensor):
        return torch.rot90(x, turns, dims=(2, 3))
    return np.rot90(x, turns, axes=(2, 3))

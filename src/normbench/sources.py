"""The real datasets of TooTouch/Normalization-Test: fetched, checksum-verified, safely
extracted, converted.

Files and checksums are torchvision's own (its CIFAR and SVHN classes), plus the official
Tiny-ImageNet-200 zip. Every downloaded archive and every CIFAR and SVHN file is MD5-verified
before it is opened (CIFAR's pickled batches are unpickled only by torchvision after its own
per-file check). Tiny-ImageNet's 110,000 JPEGs have no per-file checksums: its zip is verified,
and an extracted or ``data_root`` tree is counted (200 classes x 500 train images, 10,000 val
images) so that a partial tree is refused, never built smaller.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm import tqdm

from normbench.arrays import Split
from normbench.io import StageFailed
from normbench.registry import ConfigError

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


@dataclass(frozen=True)
class TinyCounts:
    """What a whole Tiny-ImageNet-200 tree holds."""

    classes: int = 200
    train_per_class: int = 500
    val: int = 10_000


TINY_IMAGENET_COUNTS = TinyCounts()
DEFAULT_DOWNLOAD_DIR = "~/.cache/normbench"  # shared by every clone of the project
DOWNLOAD_TIMEOUT = 60  # seconds without data before a download is given up


@dataclass(frozen=True)
class Source:
    """Where real datasets come from (the data_root, data_mirror and download_dir params)."""

    root: Path | None  # a folder already holding the datasets: used as is, never any network
    mirror: str | None  # a base URL serving the official file names instead of their hosts
    download_dir: Path  # where archives are downloaded to and extracted

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "Source":
        """From the data_root, data_mirror and download_dir params (each may be absent)."""
        root = params.get("data_root")
        mirror = params.get("data_mirror")
        download_dir = params.get("download_dir") or DEFAULT_DOWNLOAD_DIR
        if root is not None and not (isinstance(root, str) and Path(root).expanduser().is_dir()):
            raise ConfigError(f"data_root must be null or an existing folder, got {root!r}")
        if mirror is not None and not (isinstance(mirror, str) and
                                       mirror.startswith(("http://", "https://", "file://"))):
            raise ConfigError(f"data_mirror must be null or a base URL, got {mirror!r}")
        if not isinstance(download_dir, str):
            raise ConfigError(f"download_dir must be a folder path, got {download_dir!r}")
        return cls(Path(root).expanduser() if root else None, mirror,
                   Path(download_dir).expanduser())

    def folder(self, name: str) -> Path:
        return self.root if self.root is not None else self.download_dir / name


def md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def download(url: str, dest: Path, expected_md5: str, mirror: str | None) -> Path:
    """Download ``url`` (or its file name under ``mirror``) to ``dest``, verified by MD5.

    The bytes go to a temporary file that becomes ``dest`` only once its checksum matches, so an
    interrupted or corrupt download leaves nothing that looks complete; the next run starts over.
    """
    if dest.is_file() and md5(dest) == expected_md5:
        return dest
    if mirror is not None:
        url = f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[-1]}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as r:
            size = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=dest.name) as bar:
                for block in iter(lambda: r.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        actual = md5(Path(tmp))
        if actual != expected_md5:
            raise ConfigError(f"download of {url} is corrupt or truncated (MD5 {actual}, expected "
                              f"{expected_md5}); it was removed, run again to retry")
        os.replace(tmp, dest)
    except OSError as e:
        raise ConfigError(f"cannot download {url} ({e}); without network, put the dataset in "
                          "the folder named by data_root, or set data_mirror") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz or .zip; refuse members that would land outside ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if not (root / name).resolve().is_relative_to(root):
                        raise ConfigError(f"{archive} holds {name!r}, outside the target folder")
                z.extractall(dest)
        else:
            with tarfile.open(archive) as t:
                t.extractall(dest, filter="data")  # no absolute paths, '..' or escaping links
    except tarfile.FilterError as e:
        raise ConfigError(f"refusing unsafe archive {archive}: {e}") from e


def _fetch_archive(url: str, archive_md5: str, source: Source, name: str) -> Path:
    """Download and extract the archive into ``download_dir/<name>``; return that folder.

    Extraction goes to a temporary folder first, so an interrupted one leaves no partial tree.
    """
    folder = source.download_dir / name
    archive = download(url, folder / url.rsplit("/", 1)[-1], archive_md5, source.mirror)
    tmp = Path(tempfile.mkdtemp(prefix=".extract.", dir=folder))
    try:
        safe_extract(archive, tmp)
        for entry in tmp.iterdir():
            target = folder / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _not_found(error: RuntimeError) -> str:
    """torchvision's message without its advice (``download=True`` is no param of ours)."""
    return re.sub(r"\.?\s*You can use download=True to download it\.?", "", str(error)).strip()


def _verified_or_fetched(load, name: str, source: Source, url: str, archive_md5: str,
                         expected: str):
    """``load(folder)`` from data_root as is, or from download_dir after fetching on a miss.

    ``load`` raises RuntimeError (torchvision's way) when files are missing or fail checksums;
    ``expected`` is what data_root must hold for it, in words (``cifar-10-batches-py/``).
    """
    folder = source.folder(name)
    try:
        return load(folder)
    except StageFailed:
        raise  # a crash while reading (a RuntimeError too), not missing data
    except RuntimeError as e:
        if source.root is not None:
            raise ConfigError(f"data_root {folder} lacks a verified copy of {name} "
                              f"({_not_found(e)}): it must hold {expected}, as torchvision "
                              "lays it out; fix data_root, or set it to null to download"
                              ) from None
    _fetch_archive(url, archive_md5, source, name)
    try:
        return load(folder)
    except RuntimeError as e:
        raise ConfigError(f"{name} in {folder} fails its checksums after download ({e})") from e


def load_cifar(class_name: str, name: str, source: Source) -> tuple[Split, Split, list[str]]:
    """CIFAR-10 or CIFAR-100 through torchvision's class (``CIFAR10``, ``CIFAR100``), which
    verifies before unpickling."""
    import torchvision  # only the real datasets need it: the embedded ones start faster

    cls = getattr(torchvision.datasets, class_name)

    def load(folder: Path):
        return [cls(str(folder), train=train, download=False) for train in (True, False)]

    train, test = _verified_or_fetched(load, name, source, cls.url, cls.tgz_md5,
                                       f"{cls.base_folder}/")
    as_split = lambda d: Split(np.ascontiguousarray(d.data, dtype=np.uint8),  # noqa: E731
                               np.asarray(d.targets, dtype=np.int64))
    return as_split(train), as_split(test), list(train.classes)


def load_svhn(source: Source) -> tuple[Split, Split, list[str]]:
    """SVHN's train and test .mat files (torchvision's checksums); label 10 is the digit 0."""
    import torchvision

    cls = torchvision.datasets.SVHN
    folder = source.folder("svhn")
    splits = []
    for split in ("train", "test"):
        url, filename, file_md5 = cls.split_list[split]
        if source.root is None:
            download(url, folder / filename, file_md5, source.mirror)
        try:
            d = cls(str(folder), split=split, download=False)
        except RuntimeError as e:
            raise ConfigError(f"{folder / filename} is missing or fails its checksum "
                              f"({_not_found(e)}): data_root must hold train_32x32.mat and "
                              "test_32x32.mat; fix data_root, or set it to null to download"
                              ) from None
        # torchvision gives N x C x H x W; the uniform format is N x H x W x C.
        splits.append(Split(np.ascontiguousarray(d.data.transpose(0, 2, 3, 1)),
                            d.labels.astype(np.int64)))
    return splits[0], splits[1], [str(i) for i in range(10)]


def _read_rgb(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)  # some are greyscale


def _read_all(paths: list[str], desc: str) -> np.ndarray:
    """Decode JPEGs on all cores, in order.

    A worker that dies (killed for memory, say) is reported as the crash it is: as a
    RuntimeError it would read as missing files, and the archive would be extracted again.
    """
    try:
        with ProcessPoolExecutor() as pool:
            images = list(tqdm(pool.map(_read_rgb, paths, chunksize=256), total=len(paths),
                               desc=desc))
    except BrokenProcessPool as e:
        raise StageFailed(f"a JPEG decoding worker crashed while reading {desc} ({e}); the "
                          "files are not at fault: free memory (each worker decodes 256 images "
                          "at a time) and run the stage again") from None
    return np.stack(images) if images else np.empty((0, 64, 64, 3), np.uint8)


def _check_tiny_counts(base: Path, wnids: list[str], train: list[tuple[str, int]],
                       val: list[tuple[str, int]]) -> None:
    """Refuse a partial tree, naming what is missing (RuntimeError: as torchvision's checks)."""
    want = TINY_IMAGENET_COUNTS
    missing = []
    if len(wnids) != want.classes:
        missing.append(f"{len(wnids)} classes in wnids.txt, not {want.classes}")
    per_class = np.bincount([y for _, y in train], minlength=len(wnids))
    short = [f"{wnids[i]} has {n}" for i, n in enumerate(per_class) if n != want.train_per_class]
    if short:
        missing.append(f"train images per class must be {want.train_per_class}: "
                       + ", ".join(short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5
                                                 else ""))
    if len(val) != want.val:
        missing.append(f"val_annotations.txt lists {len(val)} images, not {want.val}")
    absent = [p for p, _ in val if not os.path.isfile(p)]
    if absent:
        missing.append(f"{len(absent)} listed val images are absent (e.g. {absent[0]})")
    if missing:
        raise RuntimeError(f"{base} is incomplete: " + "; ".join(missing))


def _tiny_imagenet_from(folder: Path) -> tuple[Split, Split, list[str]]:
    base = folder / "tiny-imagenet-200"
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        raise RuntimeError(f"{wnids_file} not found")
    wnids = wnids_file.read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    if (base / "words.txt").is_file():
        for line in (base / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    classes = [words.get(w, w) for w in wnids]
    train = sorted((str(p), index[w]) for w in wnids
                   for p in (base / "train" / w / "images").glob("*.JPEG"))
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise RuntimeError(f"{annotations} not found")
    val = []
    for line in annotations.read_text().splitlines():
        filename, wnid = line.split("\t")[:2]
        if wnid not in index:
            raise RuntimeError(f"{annotations} names {wnid}, which is not in {wnids_file}")
        val.append((str(base / "val" / "images" / filename), index[wnid]))
    val.sort()
    _check_tiny_counts(base, wnids, train, val)

    def split(items, desc):
        return Split(_read_all([p for p, _ in items], desc),
                     np.array([y for _, y in items], dtype=np.int64))
    return split(train, "tiny_imagenet_200 train"), split(val, "tiny_imagenet_200 val"), classes


def load_tiny_imagenet(source: Source) -> tuple[Split, Split, list[str]]:
    """Tiny-ImageNet-200 from its official zip; the labelled ``val`` split is the test set."""
    return _verified_or_fetched(_tiny_imagenet_from, "tiny_imagenet_200", source,
                                TINY_IMAGENET_URL, TINY_IMAGENET_MD5, "tiny-imagenet-200/")

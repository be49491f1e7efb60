"""Real datasets from tiny archives in their real formats, served on 127.0.0.1."""

import hashlib
import io
import pickle
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torchvision
from PIL import Image

from normbench import sources
from normbench.datasets import build_dataset
from normbench.registry import ConfigError
from normbench.sources import Source

RNG = np.random.default_rng(0)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def rgb_images(n: int, size: int = 32) -> np.ndarray:
    """N x H x W x 3 with a different level per channel, so a channel mix-up shows."""
    images = RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    images[:, 0, 0] = [200, 100, 10]  # top-left pixel: R > G > B
    return images


def write_cifar(folder: Path, cls, n_classes: int, monkeypatch) -> dict:
    """A CIFAR archive in the real layout (pickled batches in a tar.gz) with matching MD5s."""
    c100 = cls is torchvision.datasets.CIFAR100
    label_key, names_key = ("fine_labels", "fine_label_names") if c100 else ("labels", "label_names")
    base = folder / "build" / cls.base_folder
    base.mkdir(parents=True)
    truth = {"train": [], "test": []}
    md5s = {}
    for split, files in (("train", cls.train_list), ("test", cls.test_list)):
        for name, _ in files:
            images, labels = rgb_images(4), RNG.integers(0, n_classes, 4).tolist()
            # CIFAR stores each image as 3072 bytes: the red plane, then green, then blue.
            batch = {"data": images.transpose(0, 3, 1, 2).reshape(4, -1), label_key: labels}
            (base / name).write_bytes(pickle.dumps(batch))
            md5s[name] = md5_of(base / name)
            truth[split].append((images, labels))
    names = [f"class{i}" for i in range(n_classes)]
    (base / cls.meta["filename"]).write_bytes(pickle.dumps({names_key: names}))
    archive = folder / cls.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base, arcname=cls.base_folder)
    monkeypatch.setattr(cls, "train_list", [[n, md5s[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5s[n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5_of(base / cls.meta["filename"])})
    monkeypatch.setattr(cls, "tgz_md5", md5_of(archive))
    return {"truth": truth, "classes": names}


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any download attempt."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def source(tmp_path, mirror=None, root=None) -> Source:
    return Source(root, mirror, tmp_path / "downloads")


@pytest.mark.parametrize("name, cls, n", [("cifar10", torchvision.datasets.CIFAR10, 10),
                                          ("cifar100", torchvision.datasets.CIFAR100, 100)])
def test_cifar_download_convert_and_cache(name, cls, n, tmp_path, http_server, monkeypatch):
    base, served = http_server
    written = write_cifar(served, cls, n, monkeypatch)
    arrays = build_dataset(name, {}, source(tmp_path, mirror=base))
    train_images = np.concatenate([im for im, _ in written["truth"]["train"]])
    assert np.array_equal(arrays.train.images, train_images)  # RGB order, N x 32 x 32 x 3
    assert arrays.train.images[0, 0, 0].tolist() == [200, 100, 10]
    assert arrays.test.labels.tolist() == written["truth"]["test"][0][1]
    assert arrays.classes == written["classes"] and arrays.train.labels.dtype == np.int64
    (served / cls.filename).unlink()  # a second build must use what was downloaded
    assert np.array_equal(build_dataset(name, {}, source(tmp_path, mirror=base)).train.images,
                          train_images)


def test_checksum_mismatch_is_an_error_and_leaves_no_file(tmp_path, http_server, monkeypatch):
    base, served = http_server
    cls = torchvision.datasets.CIFAR10
    write_cifar(served, cls, 10, monkeypatch)
    monkeypatch.setattr(cls, "tgz_md5", "0" * 32)
    with pytest.raises(ConfigError, match="is corrupt or truncated .* it was removed"):
        build_dataset("cifar10", {}, source(tmp_path, mirror=base))
    assert list((tmp_path / "downloads" / "cifar10").iterdir()) == []


def test_corrupt_extracted_batch_is_never_unpickled(tmp_path, http_server, monkeypatch):
    base, served = http_server
    cls = torchvision.datasets.CIFAR10
    write_cifar(served, cls, 10, monkeypatch)
    build_dataset("cifar10", {}, source(tmp_path, mirror=base))
    batch = tmp_path / "downloads" / "cifar10" / cls.base_folder / "data_batch_1"
    batch.write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")  # a malicious pickle
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled unverified"))
    monkeypatch.setattr(cls, "tgz_md5", "0" * 32)  # and no good archive to fall back on
    with pytest.raises(ConfigError):
        build_dataset("cifar10", {}, source(tmp_path, mirror=base))


def test_data_root_is_used_without_network(tmp_path, no_network, monkeypatch):
    cls = torchvision.datasets.CIFAR10
    written = write_cifar(tmp_path / "made", cls, 10, monkeypatch)
    root = tmp_path / "made" / "build"  # holds cifar-10-batches-py/, as torchvision lays it out
    arrays = build_dataset("cifar10", {}, source(tmp_path, root=root))
    assert arrays.classes == written["classes"]
    assert not (tmp_path / "downloads").exists()
    with pytest.raises(ConfigError, match="data_root .* lacks a verified copy of cifar100") as e:
        build_dataset("cifar100", {}, source(tmp_path, root=root))
    # The folder it looked for, not torchvision's advice (download=True is no param here).
    assert "it must hold cifar-100-python/" in str(e.value) and "download=True" not in str(e.value)


def test_an_empty_data_root_names_the_folder_each_dataset_needs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for name, expected in (("cifar10", "cifar-10-batches-py/"), ("cifar100", "cifar-100-python/"),
                           ("tiny_imagenet_200", "tiny-imagenet-200/"),
                           ("svhn", "train_32x32.mat and test_32x32.mat")):
        with pytest.raises(ConfigError) as e:
            build_dataset(name, {}, source(tmp_path, root=empty))
        assert expected in str(e.value) and "download=True" not in str(e.value), name


def test_unreachable_network_names_the_fixes(tmp_path, closed_port_url):
    with pytest.raises(ConfigError, match="cannot download .*put the dataset in the folder named "
                                          "by data_root, or set data_mirror"):
        build_dataset("cifar10", {}, source(tmp_path, mirror=closed_port_url))


def test_svhn_mat_files(tmp_path, http_server, monkeypatch):
    base, served = http_server
    cls = torchvision.datasets.SVHN
    split_list = dict(cls.split_list)
    truth = {}
    for split in ("train", "test"):
        url, filename, _ = cls.split_list[split]
        images = rgb_images(5)
        digits = np.array([1, 2, 10, 3, 10])  # SVHN writes the digit 0 as label 10
        scipy.io.savemat(served / filename, {"X": images.transpose(1, 2, 3, 0),
                                              "y": digits[:, None].astype(np.uint8)})
        split_list[split] = [url, filename, md5_of(served / filename)]
        truth[split] = images
    monkeypatch.setattr(cls, "split_list", split_list)
    arrays = build_dataset("svhn", {}, source(tmp_path, mirror=base))
    assert np.array_equal(arrays.test.images, truth["test"])
    assert arrays.train.labels.tolist() == [1, 2, 0, 3, 0]
    assert arrays.classes == [str(i) for i in range(10)]


def write_tiny_imagenet(folder: Path) -> dict:
    """The official zip layout: wnids.txt, words.txt, train/<wnid>/images, val annotations."""
    wnids = ["n01443537", "n01629819", "n01641577"]
    buf = io.BytesIO()
    truth = {"train": {}, "val": {}}
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids) + "\n")
        z.writestr("tiny-imagenet-200/words.txt",
                   "n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
        annotations = []
        for k, wnid in enumerate(wnids):
            for i in range(2):
                colour = (40 * k + 20, 30 * i + 100, 250 - 40 * k)
                z.writestr(f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{i}.JPEG",
                           jpeg(colour, grey=(k == 2 and i == 1)))
                truth["train"][(wnid, i)] = colour
            name = f"val_{k}.JPEG"
            z.writestr(f"tiny-imagenet-200/val/images/{name}", jpeg((k * 80, 60, 200)))
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
        z.writestr("tiny-imagenet-200/val/val_annotations.txt", "\n".join(annotations) + "\n")
    path = folder / "tiny-imagenet-200.zip"
    path.write_bytes(buf.getvalue())
    return {"wnids": wnids, "md5": md5_of(path)}


def jpeg(colour, grey=False) -> bytes:
    out = io.BytesIO()
    img = Image.new("RGB", (64, 64), colour)
    (img.convert("L") if grey else img).save(out, format="JPEG", quality=95)
    return out.getvalue()


# The archive above is the real layout at a small size: these are its whole counts.
SMALL_TINY = sources.TinyCounts(classes=3, train_per_class=2, val=3)


def test_tiny_imagenet_zip_with_val_as_test(tmp_path, http_server, monkeypatch):
    base, served = http_server
    written = write_tiny_imagenet(served)
    monkeypatch.setattr(sources, "TINY_IMAGENET_MD5", written["md5"])
    monkeypatch.setattr(sources, "TINY_IMAGENET_COUNTS", SMALL_TINY)
    arrays = build_dataset("tiny_imagenet_200", {}, source(tmp_path, mirror=base))
    assert arrays.train.images.shape == (6, 64, 64, 3)  # 64 x 64 stays 64 x 64
    assert arrays.test.images.shape == (3, 64, 64, 3)
    assert arrays.classes == ["goldfish", "European fire salamander", "n01641577"]
    assert arrays.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert arrays.test.labels.tolist() == [0, 1, 2]
    first = arrays.train.images[0, 32, 32].astype(int)  # JPEG: close, not exact
    assert np.abs(first - [20, 100, 250]).max() <= 4
    grey = arrays.train.images[5, 32, 32]
    assert grey[0] == grey[1] == grey[2]  # a greyscale JPEG becomes three equal channels


def tiny_root(tmp_path: Path) -> Path:
    """A data_root holding the small archive's tree, extracted."""
    root = tmp_path / "root"
    write_tiny_imagenet(tmp_path)
    with zipfile.ZipFile(tmp_path / "tiny-imagenet-200.zip") as z:
        z.extractall(root)
    return root


@pytest.mark.parametrize("damage, message", [
    (lambda t: (t / "train/n01629819/images/n01629819_1.JPEG").unlink(),
     r"is incomplete: train images per class must be 2: n01629819 has 1"),
    (lambda t: shutil.rmtree(t / "train/n01641577"),
     r"is incomplete: .*n01641577 has 0"),
    (lambda t: (t / "val/images/val_2.JPEG").unlink(),
     r"is incomplete: 1 listed val images are absent \(e.g. .*val_2.JPEG\)"),
    (lambda t: (t / "wnids.txt").write_text("n01443537\nn01629819\n"),
     r"val_annotations.txt names n01641577, which is not in .*wnids.txt"),
    (lambda t: [(t / "wnids.txt").write_text("n01443537\nn01629819\n"),
                (t / "val/val_annotations.txt").write_text("val_0.JPEG\tn01443537\n"
                                                           "val_1.JPEG\tn01629819\n")],
     r"is incomplete: 2 classes in wnids.txt, not 3; val_annotations.txt lists 2 images, "
     r"not 3"),
])
def test_a_partial_tiny_imagenet_is_refused_naming_what_is_missing(tmp_path, monkeypatch,
                                                                     damage, message):
    monkeypatch.setattr(sources, "TINY_IMAGENET_COUNTS", SMALL_TINY)
    root = tiny_root(tmp_path)
    whole = build_dataset("tiny_imagenet_200", {}, source(tmp_path, root=root))
    assert len(whole.train.labels) == 6 and len(whole.test.labels) == 3
    damage(root / "tiny-imagenet-200")
    with pytest.raises(ConfigError, match=f"data_root .* lacks a verified copy of "
                                          f"tiny_imagenet_200 \\(.*{message}"):
        build_dataset("tiny_imagenet_200", {}, source(tmp_path, root=root))


def test_the_real_counts_are_the_official_ones():
    assert sources.TINY_IMAGENET_COUNTS == sources.TinyCounts(200, 500, 10_000)


def test_a_crashed_decoding_worker_is_reported_as_a_crash_not_as_missing_files(
        tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool
    from normbench.io import StageFailed

    monkeypatch.setattr(sources, "TINY_IMAGENET_COUNTS", SMALL_TINY)
    root = tiny_root(tmp_path)

    class Crashing:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, *args, **kwargs):
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(sources, "ProcessPoolExecutor", Crashing)
    fetched = []
    monkeypatch.setattr(sources, "_fetch_archive", lambda *a: fetched.append(a))
    with pytest.raises(StageFailed, match="a JPEG decoding worker crashed while reading "
                                          "tiny_imagenet_200 train .*not at fault"):
        build_dataset("tiny_imagenet_200", {}, source(tmp_path, root=root))
    downloaded = source(tmp_path)
    shutil.copytree(root, downloaded.folder("tiny_imagenet_200"))
    with pytest.raises(StageFailed, match="worker crashed"):  # from download_dir: no re-fetch
        build_dataset("tiny_imagenet_200", {}, downloaded)
    assert fetched == []  # a crash is no reason to fetch and extract the archive again


def test_path_traversal_archives_are_refused(tmp_path):
    evil_tar = tmp_path / "evil.tar.gz"
    with tarfile.open(evil_tar, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ConfigError, match="refusing unsafe archive"):
        sources.safe_extract(evil_tar, tmp_path / "out")
    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as z:
        z.writestr("../../escaped.txt", "owned")
    with pytest.raises(ConfigError, match="outside the target folder"):
        sources.safe_extract(evil_zip, tmp_path / "out")
    link_tar = tmp_path / "link.tar.gz"
    with tarfile.open(link_tar, "w:gz") as tar:
        info = tarfile.TarInfo("link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ConfigError, match="refusing unsafe archive"):
        sources.safe_extract(link_tar, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_source_params_are_checked(tmp_path):
    assert Source.from_params({}).root is None
    with pytest.raises(ConfigError, match="data_root must be null or an existing folder"):
        Source.from_params({"data_root": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="data_mirror must be null or a base URL"):
        Source.from_params({"data_mirror": "mirror.local"})
    assert Source.from_params({"download_dir": str(tmp_path)}).download_dir == tmp_path

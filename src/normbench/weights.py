"""ImageNet weights: torchvision's weights API and cache ($TORCH_HOME), verified, offline-safe.

torchvision names each weights file after the first hex digits of its SHA-256 (for example
``resnet18-f37072fd.pth``) but checks that hash only while downloading. normbench checks it every
time a file is used, so a truncated or corrupted file in the cache is reported, not loaded.

torch and torchvision are imported by the functions that use them: checking a mirror needs
neither (seconds of CPU in every stage that only checks).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normbench.registry import ConfigError

if TYPE_CHECKING:
    import torchvision

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,})\.")  # the file-name convention of torch.hub


def weights_entry(model: str, version: Any) -> torchvision.models.WeightsEnum:
    """torchvision's weights enum member ``version`` (e.g. IMAGENET1K_V1) for ``model``.

    Only classification weights qualify: vgg16's IMAGENET1K_FEATURES has an untrained classifier
    and expects 0-255 inputs.
    """
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(model)
    except ValueError:  # not a torchvision architecture (nets.SmallCNN)
        raise ConfigError(f"{model} has no ImageNet weights (only torchvision's models do); "
                          "use weights: scratch or pretrained, or another model") from None
    valid = [w.name for w in enum if w.meta.get("categories")]
    if not isinstance(version, str) or version not in valid:
        raise ConfigError(f"unknown ImageNet weights version {version!r} for {model} "
                          f"(start.imagenet); "
                          f"valid choices: {', '.join(valid)}")
    return enum[version]


def cache_path(entry: torchvision.models.WeightsEnum) -> Path:
    """Where torchvision's loader looks for the file: $TORCH_HOME/hub/checkpoints/<name>."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / entry.url.rsplit("/", 1)[-1]


def expected_sha256_prefix(entry: torchvision.models.WeightsEnum) -> str:
    match = _HASH_IN_NAME.search(entry.url.rsplit("/", 1)[-1])
    if match is None:
        raise ConfigError(f"{entry.url} carries no hash in its name; cannot verify it")
    return match.group(1)


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(path: Path, prefix: str) -> None:
    actual = sha256(path)
    if not actual.startswith(prefix):
        raise ConfigError(
            f"weights file {path} is corrupted: its SHA-256 {actual[:16]}... does not start with "
            f"{prefix}. Delete it and fetch it again (make weights), or use weights: scratch"
        )


def check_mirror(mirror: Any) -> str | None:
    """The weights_mirror param: null, or an http(s):// or file:// base URL."""
    if mirror is None or (isinstance(mirror, str) and
                          mirror.startswith(("http://", "https://", "file://"))):
        return mirror
    raise ConfigError(f"weights_mirror must be null or a base URL (http://, https://, file://), "
                      f"got {mirror!r}")


def download_url(entry: torchvision.models.WeightsEnum, mirror: str | None) -> str:
    """The official URL, or the same file name under ``mirror`` (a base URL)."""
    if mirror is None:
        return entry.url
    return f"{mirror.rstrip('/')}/{entry.url.rsplit('/', 1)[-1]}"


def fetch(entry: torchvision.models.WeightsEnum, mirror: str | None = None) -> Path:
    """Make sure the verified file is in the cache; download it there if it is missing."""
    import torch

    path = cache_path(entry)
    prefix = expected_sha256_prefix(entry)
    if not path.is_file():
        url = download_url(entry, mirror)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Writes to a temporary file and moves it into place only when the hash matches.
            torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=True)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash a RuntimeError
            raise ConfigError(
                f"cannot get ImageNet weights {path.name} from {url} ({e}). On a machine without "
                f"network, copy that file to {path} (or run `make weights` where there is "
                "network and copy $TORCH_HOME over), set weights_mirror to a reachable mirror, "
                "or use weights: scratch"
            ) from e
    verify(path, prefix)
    return path

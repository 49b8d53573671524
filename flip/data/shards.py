"""Finding webdataset shards: brace patterns, several sources, directories, sizes.

A data spec is what users pass to `--data`: one or more sources separated by `::`
(OpenCLIP's convention), each a brace pattern (`/data/laion/{00000..00099}.tar`), a
glob, a single tar, or a directory of tars.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
from pathlib import Path

from braceexpand import braceexpand

from flip.errors import DataError


def expand_urls(spec: str) -> list[str]:
    """Expand a data spec into a sorted-per-source list of shard paths; fail clearly if empty."""
    if not spec or not spec.strip():
        raise DataError("empty data pattern: pass --data with a shard pattern such as 'shards/{00000..00009}.tar'")
    urls: list[str] = []
    for source in spec.split("::"):
        source = source.strip()
        found: list[str] = []
        for pattern in braceexpand(source):
            if "://" in pattern or pattern.startswith("pipe:"):
                found.append(pattern)  # remote/pipe urls are opened by webdataset's gopen
            elif os.path.isdir(pattern):
                found.extend(sorted(str(p) for p in Path(pattern).glob("*.tar")))
            elif any(ch in pattern for ch in "*?["):
                found.extend(sorted(glob.glob(pattern)))
            elif os.path.exists(pattern):
                found.append(pattern)
            else:
                raise DataError(f"data file not found: {pattern} (from --data {source!r})")
        if not found:
            raise DataError(f"no .tar shards match {source!r}: check the path or pattern given to --data")
        urls.extend(found)
    return urls


def check_shards(spec: str, first: int = 16) -> list[str]:
    """`expand_urls`, then a look at the first local shards: when none of them is a tar (a text file, a
    folder of something else), the data is unusable and this says so now, not after the run started. A
    corrupt shard among readable ones is left to training, which skips and counts it."""
    urls = expand_urls(spec)
    local = [url for url in urls if "://" not in url and not url.startswith("pipe:")][:first]
    if local and not any(_is_tar(url) for url in local):
        what = "is not a webdataset shard (a .tar file)" if len(local) == 1 else \
            f"and the {len(local) - 1} shard(s) after it are not webdataset shards (.tar files)"
        raise DataError(f"{local[0]} {what}: check the path given to --data ({spec!r})")
    return urls


def _is_tar(path: str) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:  # a directory, unreadable, vanished
        return False


def count_samples(urls: list[str]) -> int:
    """Number of samples in the shards, from `sizes.json` where present, else by reading tar headers.

    `sizes.json` (a {shard file name: count} map next to the shards) is what img2dataset-style
    pipelines and OpenCLIP use; without it we count distinct keys, which reads only headers.
    """
    total = 0
    sizes_cache: dict[str, dict] = {}
    for url in urls:
        folder, name = os.path.split(url)
        if folder not in sizes_cache:
            sizes_file = os.path.join(folder, "sizes.json")
            sizes_cache[folder] = json.loads(Path(sizes_file).read_text()) if os.path.exists(sizes_file) else {}
        if name in sizes_cache[folder]:
            total += int(sizes_cache[folder][name])
            continue
        try:
            with tarfile.open(url) as tar:
                keys = {m.name.rsplit(".", 1)[0] for m in tar if m.isreg()}
        except (OSError, tarfile.TarError) as exc:
            raise DataError(f"cannot read shard {url}: {exc}") from exc
        total += len(keys)
    return total

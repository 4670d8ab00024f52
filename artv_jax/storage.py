"""Work-directory files that may be local or on GCS (`gs://...`): the one place that knows the difference.

A pod run writes its workdir to a bucket, a laptop run to a local folder;
orbax handles both itself, and everything else the trainer, sampler and
exporter write (config, metrics, samples, scores) goes through here
(`etils.epath`, which reaches GCS through `tf.io.gfile`). Local paths are made
absolute; URLs are left as they are (`os.path.abspath("gs://b/run")` would
turn a bucket into a local folder).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath


def is_remote(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> str:
    """An absolute local path, or the URL unchanged."""
    path = str(path)
    return path.rstrip("/") if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
    return str(epath.Path(path).joinpath(*parts)) if is_remote(path) else os.path.join(path, *parts)


def exists(path: str) -> bool:
    return epath.Path(path).exists()


def is_dir(path: str) -> bool:
    return epath.Path(path).is_dir()


def list_dir(path: str) -> list[str]:
    """Entry names of a directory; [] when it does not exist."""
    p = epath.Path(path)
    return sorted(child.name for child in p.iterdir()) if p.is_dir() else []


def move(source: str, target: str) -> None:
    """Renames a file or directory, creating the target's parent directory."""
    epath.Path(target).parent.mkdir(parents=True, exist_ok=True)
    epath.Path(source).rename(target)


def read_text(path: str) -> str:
    return epath.Path(path).read_text()


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path`, creating its directory."""
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


@contextlib.contextmanager
def local_file(path: str) -> Iterator[str]:
    """A local path to write `path` through: itself when local, else a temporary file copied up on exit.

    For writers that only take local files (PyAV, PIL).
    """
    if not is_remote(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        yield local
        target = epath.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(local, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)


class AppendLog:
    """A text file that grows line by line: appended locally; on GCS (no append) rewritten at each flush."""

    def __init__(self, path: str):
        self.path = path
        if is_remote(path):
            self._lines = [read_text(path)] if exists(path) else []
            self._file = None
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._file = open(path, "a")

    def write_line(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        else:
            self._lines.append(line + "\n")
            write_text(self.path, "".join(self._lines))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

"""Where a sweep lives: a local folder or an object store (s3://, gs://, any URI pyarrow's filesystems take).

Ray Tune writes trial state and checkpoints there itself (RunConfig.storage_path); this module is how lora_tune
reads and writes its own files there, through pyarrow.fs, so the same code serves a local disk, an NFS mount
and a bucket. Credentials come from the usual environment (AWS_* variables, instance roles, GOOGLE_* ...);
an S3-compatible endpoint (MinIO, Ceph, R2, moto) from AWS_ENDPOINT_URL, the AWS SDK convention.

Nothing is half-written: a file is one object PUT (or a temp file + rename on a local disk), and a folder
(`put_dir`) is complete only once its manifest (the file list with sizes and sha256) is written, after its
files; readers (`get_dir`) refuse a folder without one, or whose files do not match it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from lora_tune.config import is_uri

MANIFEST = "MANIFEST.json"


def join(*parts: str) -> str:
    """Relative storage paths joined with '/', empty parts skipped ('' is the folder itself)."""
    return "/".join(part.strip("/") for part in parts if part and part.strip("/"))


class StorageError(RuntimeError):
    """A sweep location cannot be read or written; the message is one line."""


def filesystem(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs as pafs

    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location.removeprefix("file://")).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as exc:  # noqa: BLE001 - unknown scheme, bad bucket name, missing credentials ...
        raise StorageError(f"cannot open {location} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def root_exists(location: str) -> bool:
    """An object-store URI's bucket (the first part of its path) exists; a local path's nearest folder does."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    if not is_uri(location):
        return True
    return fs.get_file_info(path.split("/", 1)[0]).type == pafs.FileType.Directory


class Store:
    """A folder on some filesystem: relative paths in, bytes and text out."""

    def __init__(self, fs: Any, root: str, uri: str | None = None):
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.uri = uri or root

    @classmethod
    def at(cls, location: str | Path) -> Store:
        location = str(location)
        fs, root = filesystem(location)
        return cls(fs, root, location.rstrip("/") if is_uri(location) else root)

    @property
    def is_local(self) -> bool:
        return type(self.fs).__name__ == "LocalFileSystem"

    def path(self, relative: str = "") -> str:
        return posixpath.join(self.root, join(relative)) if join(relative) else self.root

    def child(self, relative: str) -> Store:
        return Store(self.fs, self.path(relative), f"{self.uri.rstrip('/')}/{join(relative)}")

    def _info(self, relative: str) -> Any:
        return self.fs.get_file_info(self.path(relative))

    def exists(self, relative: str = "") -> bool:
        import pyarrow.fs as pafs

        return self._info(relative).type != pafs.FileType.NotFound

    def is_file(self, relative: str) -> bool:
        import pyarrow.fs as pafs

        return self._info(relative).type == pafs.FileType.File

    def read_bytes(self, relative: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(relative)) as handle:
                return handle.read()
        except (FileNotFoundError, OSError) as exc:
            raise StorageError(f"cannot read {self.uri}/{relative} ({str(exc).splitlines()[0][:200]})") from None

    def read_text(self, relative: str) -> str:
        return self.read_bytes(relative).decode("utf-8")

    def read_json(self, relative: str) -> Any:
        return json.loads(self.read_text(relative))

    def write_bytes(self, relative: str, data: bytes) -> None:
        """One object PUT (whole or nothing); on a local disk a temp file renamed into place."""
        target = self.path(relative)
        parent = posixpath.dirname(target)
        self.fs.create_dir(parent, recursive=True)
        temp = posixpath.join(parent, f".{posixpath.basename(target)}-{uuid.uuid4().hex}") if self.is_local else target
        with self.fs.open_output_stream(temp) as handle:
            handle.write(data)
        if temp != target:
            os.chmod(temp, 0o644)
            os.replace(temp, target)

    def write_text(self, relative: str, text: str) -> None:
        self.write_bytes(relative, text.encode("utf-8"))

    def write_json(self, relative: str, data: Any) -> None:
        self.write_text(relative, json.dumps(data, indent=2, default=str) + "\n")

    def delete(self, relative: str) -> None:
        """Remove a file or a folder; nothing when it is not there."""
        import pyarrow.fs as pafs

        info = self._info(relative)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(relative))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(relative))

    def files(self, relative: str = "") -> list[str]:
        """Every file under `relative`, as paths relative to it (sorted)."""
        import pyarrow.fs as pafs

        base = self.path(relative)
        if not self.exists(relative):
            return []
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        found = [info.path for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File]
        return sorted(posixpath.relpath(p, base) for p in found)

    def folders(self, relative: str = "") -> list[str]:
        """The folders directly under `relative` (names, sorted)."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path(relative), recursive=False, allow_not_found=True)
        return sorted(posixpath.basename(info.path) for info in self.fs.get_file_info(selector)
                      if info.type == pafs.FileType.Directory)

    def put_dir(self, local: Path, relative: str) -> int:
        """Copy a local folder to `relative`: old manifest first removed, files, then the manifest. Returns bytes.
        On a local disk the folder is assembled beside its place and renamed into it."""
        local = Path(local)
        entries = {str(p.relative_to(local)): p for p in sorted(local.rglob("*")) if p.is_file()}
        manifest = {"files": {name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
                              for name, path in entries.items()}}
        if self.is_local:
            return self._put_local_dir(entries, manifest, relative)
        self.delete(join(relative, MANIFEST))
        for name, path in entries.items():
            self.write_bytes(join(relative, name), path.read_bytes())
        self.write_json(join(relative, MANIFEST), manifest)
        return sum(m["bytes"] for m in manifest["files"].values())

    def _put_local_dir(self, entries: dict[str, Path], manifest: dict, relative: str) -> int:
        from lora_tune.atomic import atomic_directory

        with atomic_directory(Path(self.path(relative))) as tmp:
            for name, path in entries.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, tmp / name)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return sum(m["bytes"] for m in manifest["files"].values())

    def is_complete_dir(self, relative: str) -> bool:
        return self.is_file(join(relative, MANIFEST))

    def get_dir(self, relative: str, local: Path) -> Path:
        """Copy a complete folder (its manifest present, every file matching it) into `local`; returns it."""
        if not self.is_complete_dir(relative):
            raise StorageError(f"{self.uri}/{relative} is incomplete or missing (no {MANIFEST}); accepted: a folder "
                               "written whole by lora_tune")
        manifest = self.read_json(join(relative, MANIFEST))
        local = Path(local)
        for name, meta in manifest["files"].items():
            data = self.read_bytes(join(relative, name))
            if len(data) != meta["bytes"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise StorageError(f"{self.uri}/{join(relative, name)} does not match its manifest")
            (local / name).parent.mkdir(parents=True, exist_ok=True)
            (local / name).write_bytes(data)
        return local

    def local_dir(self, relative: str) -> Path:
        """A local folder holding `relative`: itself on a local disk, else a cached download (verified)."""
        if self.is_local:
            if not self.is_complete_dir(relative):
                raise StorageError(f"{self.path(relative)} is incomplete or missing (no {MANIFEST})")
            return Path(self.path(relative))
        target = cache_dir(f"{self.uri}/{relative}")
        if target.exists():
            shutil.rmtree(target)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            self.get_dir(relative, staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir(uri: str) -> Path:
    """A local folder for downloads of `uri`: <cache>/storage/<name>-<hash> (cache: embedded.cache_root)."""
    from lora_tune.embedded import cache_root

    name = uri.rstrip("/").rsplit("/", 2)
    label = "-".join(part for part in name[-2:] if part)[-60:]
    folder = cache_root() / "storage" / f"{label}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder

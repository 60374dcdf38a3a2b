"""Tar shards in the WebDataset layout: the writer, the manifest, the reader, ``verify``.

A shard is a plain POSIX (ustar) tar; a sample is two adjacent members sharing a key (the
name up to the first dot): ``<key>.jpg`` (or ``.png``) holding the encoded image and
``<key>.cls`` holding the class index as decimal text (``-1`` for an unlabeled image).
Keys are the sample's global index in the set, nine digits (``000001234``), so a sample's
index in the manifest order is readable from its name. Shards are cut at ``shard_size``
bytes (~1 GB by default; a shard holds at least one sample).

What is stored:
    * From image files (ImageNet, ImageNet-100, image and unlabeled folders) the file's
      bytes are copied as they are: no re-encoding, so pixels are those of the files
      (a PNG or CMYK file misnamed ``.JPEG`` is copied as well and decoded by content).
    * From array datasets (CIFAR-10/100, STL-10) each image is encoded as **PNG
      (lossless)**: decoded pixels equal the arrays' exactly.

The writer stores the samples in a shuffled order (a permutation of ``--seed``), so a
class-sorted folder does not become class-sorted shards (the streaming loader shuffles
within a bounded buffer only).

``manifest.json`` (written last, atomically; every shard is written to a temporary name and
renamed) lists, per shard, its name, sample count, bytes and SHA-256, and the totals and
class names. The loader checks names, presence and sizes when it opens a set and the count
of every shard it reads to the end; ``verify`` also re-hashes every byte and parses every
member.

Command line (``python -m dataroom.shards``)::

    write SOURCE OUT [--root R] [--split train] [--shard-size 1GB] [--seed 0]
    verify DIR_OR_MANIFEST

``SOURCE`` is a dataset name (``cifar10``, ``cifar100``, ``stl10``, ``imagenet``,
``imagenet100``, ``image_folder``, ``unlabeled_folder``; folder given with ``--root``) or a
folder (read as ``image_folder`` when ``<folder>/<split>/`` exists, otherwise as an
unlabeled folder). A user mistake prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from dataroom.readers import DatasetError

FORMAT = "sslbench-shards/1"
MANIFEST = "manifest.json"
IMAGE_EXTS = ("jpg", "png")
KEY_DIGITS = 9
SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.tar$")
BLOCK = 512
ARRAY_DATASETS = ("cifar10", "cifar100", "stl10")
FILE_DATASETS = ("imagenet", "imagenet100", "image_folder", "unlabeled_folder")


class ShardError(DatasetError):
    """A shard set is malformed: manifest, missing or extra shard, truncated or bad tar."""


# ---------------------------------------------------------------------------------------
# sizes


def parse_size(text: str) -> int:
    """``"1GB"``, ``"512MB"``, ``"64KiB"``, ``"1e9"``, ``"20000"`` → bytes (decimal units)."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 1GB, 500MB, 64KiB, 20000)")
    value = float(m.group(1))
    unit = "KMGT".find(m.group(2).upper()) + 1 if m.group(2) else 0
    size = int(value * (1024 if m.group(3) else 1000) ** unit)
    if size <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return size


# ---------------------------------------------------------------------------------------
# manifest


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest lists it."""

    name: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """A shard set: ``manifest.json`` and the folder it lies in.

    Attributes:
        path: The manifest file.
        shards: The shards, in sample order.
        classes: Class names (index = label); empty for an unlabeled set.
        meta: The manifest's other fields (dataset, split, source, encoding …).
    """

    path: Path
    shards: list[ShardInfo]
    classes: list[str]
    meta: dict[str, Any]

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def num_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def offsets(self) -> np.ndarray:
        """int64 (num_shards + 1,): shard i holds global indices ``offsets[i]:offsets[i+1]``."""
        out = np.zeros(len(self.shards) + 1, dtype=np.int64)
        np.cumsum([s.samples for s in self.shards], out=out[1:])
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.meta, "format": FORMAT, "num_shards": len(self.shards),
                "num_samples": self.num_samples,
                "num_bytes": sum(s.bytes for s in self.shards), "classes": self.classes,
                "shards": [s.__dict__ for s in self.shards]}


def manifest_path(root: str | Path) -> Path:
    """``root`` itself when it is a file, else ``root/manifest.json``."""
    root = Path(root)
    return root if root.is_file() else root / MANIFEST


def load_manifest(root: str | Path, check_files: bool = True,
                  text: str | None = None) -> Manifest:
    """Read and check a manifest.

    Args:
        root: The shard folder or its manifest file.
        check_files: Also check the folder: every listed shard present with the listed
            size, and no ``*.tar`` that the manifest does not list (set False when the
            shards are read through a URL, not from this folder).
        text: The manifest's text, already fetched (``root`` then only names it).

    Raises:
        ShardError: No or malformed manifest, a bad shard name, a missing shard, a shard
            of another size than listed, a shard in the folder missing from the manifest.
    """
    path = Path(root) if text is not None else manifest_path(root)
    if text is None and not path.is_file():
        raise ShardError(f"no shard manifest at {path}: write the shards with "
                         "`python -m dataroom.shards write SOURCE OUT`")
    try:
        doc = json.loads(path.read_text() if text is None else text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardError(f"{path}: not a readable JSON manifest ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ShardError(f"{path}: not an sslbench shard manifest (format "
                         f"{doc.get('format') if isinstance(doc, dict) else None!r}, "
                         f"expected {FORMAT!r})")
    try:
        shards = [ShardInfo(str(s["name"]), int(s["samples"]), int(s["bytes"]),
                            str(s["sha256"])) for s in doc["shards"]]
        classes = [str(c) for c in doc["classes"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ShardError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from None
    if not shards:
        raise ShardError(f"{path}: the manifest lists no shards")
    names = [s.name for s in shards]
    for s in shards:
        # Names are substituted into pipe: commands and joined to the folder: plain names only.
        if not SHARD_NAME.match(s.name) or ".." in s.name:
            raise ShardError(f"{path}: bad shard name {s.name!r} (expected a plain "
                             "'<name>.tar' of letters, digits, '.', '_', '-')")
        if s.samples <= 0 or s.bytes <= 0:
            raise ShardError(f"{path}: shard {s.name} lists {s.samples} samples, "
                             f"{s.bytes} bytes")
    if len(set(names)) != len(names):
        raise ShardError(f"{path}: a shard is listed twice")
    for key in ("num_samples", "num_shards"):
        want = sum(s.samples for s in shards) if key == "num_samples" else len(shards)
        if key in doc and int(doc[key]) != want:
            raise ShardError(f"{path}: {key} = {doc[key]} but the shards add up to {want}")
    meta = {k: v for k, v in doc.items()
            if k not in ("format", "shards", "classes", "num_samples", "num_shards",
                         "num_bytes")}
    manifest = Manifest(path, shards, classes, meta)
    if check_files:
        check_folder(manifest)
    return manifest


def check_folder(manifest: Manifest) -> None:
    """Every listed shard present with its listed size; no unlisted ``*.tar``."""
    folder = manifest.folder
    listed = {s.name for s in manifest.shards}
    extra = sorted(p.name for p in folder.glob("*.tar") if p.name not in listed)
    if extra:
        raise ShardError(f"{folder}: shard(s) not in the manifest: {', '.join(extra[:5])}"
                         f"{' …' if len(extra) > 5 else ''}. A manifest from another write? "
                         "Rewrite the set, or remove the stray shards.")
    for s in manifest.shards:
        p = folder / s.name
        if not p.is_file():
            raise ShardError(f"{p}: shard listed in the manifest is missing")
        size = p.stat().st_size
        if size != s.bytes:
            raise ShardError(f"{p}: {size} bytes, the manifest lists {s.bytes} "
                             f"({'truncated' if size < s.bytes else 'changed'} since written)")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# reading tars


@dataclass
class Member:
    """A regular file of a tar: its name and bytes (``None`` when skipped unread)."""

    name: str
    size: int
    data: bytes | None


def _octal(field: bytes) -> int:
    text = field.replace(b"\0", b" ").strip()
    if field and field[0] & 0x80:  # GNU base-256 size
        return int.from_bytes(field[1:], "big")
    return int(text, 8) if text else 0


def _read_exact(f: IO[bytes], n: int) -> bytes:
    chunks, left = [], n
    while left:
        b = f.read(left)
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def _skip(f: IO[bytes], n: int, end: int | None) -> int:
    """Skip ``n`` bytes (``seek`` when the stream's ``end`` is known); returns how many could
    be skipped (short at the end of the stream)."""
    if end is not None:
        pos = f.tell()
        f.seek(min(pos + n, end))
        return min(n, end - pos)
    done = 0
    while done < n:
        b = f.read(min(1 << 20, n - done))
        if not b:
            break
        done += len(b)
    return done


def iter_members(f: IO[bytes], where: str, want: Any = None) -> Iterator[Member]:
    """The regular files of a ustar stream, in order, checked (own parser, no ``tarfile``:
    exact errors on a truncated stream, and data skipped by ``seek`` on a local file).

    Args:
        f: The stream (a file or a pipe).
        where: Shard name for messages.
        want: ``want(name) -> bool``: read this member's bytes (others skipped);
            ``None`` = read all.

    Raises:
        ShardError: A truncated header or member, a bad header checksum, a member type
            other than a regular file or directory.
    """
    try:
        end = os.fstat(f.fileno()).st_size if f.seekable() else None
    except (AttributeError, OSError, io.UnsupportedOperation):
        end = None
    offset = 0
    while True:
        head = _read_exact(f, BLOCK)
        if not head:
            raise ShardError(f"{where}: truncated (the tar ends at byte {offset} without its "
                             "end-of-archive blocks)")
        if len(head) < BLOCK:
            raise ShardError(f"{where}: truncated inside a header at byte {offset}")
        if head == b"\0" * BLOCK:
            return
        stored = _octal(head[148:156])
        actual = sum(head[:148]) + 8 * 32 + sum(head[156:])
        if stored != actual:
            raise ShardError(f"{where}: corrupt tar header at byte {offset} (checksum)")
        name = head[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = head[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix and head[257:262] == b"ustar":
            name = f"{prefix}/{name}"
        size = _octal(head[124:136])
        kind = head[156:157]
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        offset += BLOCK
        if kind == b"5":
            continue
        if kind not in (b"0", b"\0"):
            raise ShardError(f"{where}: member {name!r} of tar type {kind!r}; shards hold "
                             "regular files only (write them with dataroom.shards)")
        if want is None or want(name):
            data = _read_exact(f, size)
            if len(data) < size:
                raise ShardError(f"{where}: truncated inside member {name} "
                                 f"({len(data)} of {size} bytes)")
            if _skip(f, padded - size, end) < padded - size:
                raise ShardError(f"{where}: truncated after member {name}")
        else:
            data = None
            if _skip(f, padded, end) < padded:
                raise ShardError(f"{where}: truncated inside member {name}")
        offset += padded
        yield Member(name, size, data)


def split_key(name: str) -> tuple[str, str]:
    """``"dir/000012.jpg"`` → ``("dir/000012", "jpg")`` (key up to the basename's first dot)."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return name[:len(name) - len(base)] + stem, ext


@dataclass
class Sample:
    """One sample of a shard: ``data`` is ``None`` when skipped unread."""

    key: str
    ext: str
    data: bytes | None
    label: int | None


def iter_samples(f: IO[bytes], where: str, read: Any = None) -> Iterator[Sample]:
    """Pair ``<key>.<image>`` + ``<key>.cls`` members into samples.

    Args:
        read: ``read(k) -> bool`` for the k-th sample of the shard: read its image bytes
            (others are skipped; labels are always read, they are a few bytes).

    Raises:
        ShardError: As :func:`iter_members`, and a sample without its image or label, an
            unknown member, a label that is not an integer.
    """
    state = {"k": 0}

    def want(name: str) -> bool:
        ext = split_key(name)[1]
        return ext == "cls" or read is None or read(state["k"])

    pending: tuple[str, str, bytes | None] | None = None
    for m in iter_members(f, where, want):
        key, ext = split_key(m.name)
        if ext in IMAGE_EXTS:
            if pending is not None:
                raise ShardError(f"{where}: sample {pending[0]} has no .cls member")
            pending = (key, ext, m.data)
        elif ext == "cls":
            if pending is None or pending[0] != key:
                raise ShardError(f"{where}: {m.name} does not follow its image member "
                                 f"(expected {pending[0] + '.cls' if pending else 'an image'})")
            try:
                label = int((m.data or b"").decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                raise ShardError(f"{where}: {m.name} is not an integer class index "
                                 f"({(m.data or b'')[:20]!r})") from None
            yield Sample(key, pending[1], pending[2], label)
            state["k"] += 1
            pending = None
        else:
            raise ShardError(f"{where}: unexpected member {m.name!r} (a sample is "
                             f"<key>.{{{','.join(IMAGE_EXTS)}}} + <key>.cls)")
    if pending is not None:
        raise ShardError(f"{where}: sample {pending[0]} has no .cls member")


# ---------------------------------------------------------------------------------------
# writing


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class _Source:
    """What the writer copies: ``len``, ``item(i) -> (ext, bytes, label)``, classes, meta."""

    def __init__(self, n: int, item: Any, classes: list[str], meta: dict[str, Any]) -> None:
        self.n, self.item, self.classes, self.meta = n, item, classes, meta


def open_source(source: str, root: str = "", split: str = "train",
                class_list: str | None = None) -> _Source:
    """A dataset name (with ``root``) or a folder, as what the writer copies.

    Raises:
        DatasetError: Unknown name, or the readers' errors (missing/malformed files).
    """
    from dataroom.pretrain import open_files  # noqa: PLC0415 (pretrain imports loader)

    if source in ARRAY_DATASETS:
        if source == "stl10":
            from dataroom.stl10 import read_stl10  # noqa: PLC0415
            arrays = read_stl10(root, split)
        else:
            from dataroom.cifar import read_cifar  # noqa: PLC0415
            arrays = read_cifar(source, root, split)

        def array_item(i: int) -> tuple[str, bytes, int]:
            pixels = arrays.images.take(np.asarray([i])).numpy()[0].transpose(1, 2, 0)
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(buf, format="PNG")
            return "png", buf.getvalue(), int(arrays.labels[i])

        return _Source(len(arrays), array_item, list(arrays.classes),
                       {"dataset": source, "split": arrays.split, "source": arrays.root,
                        "encoding": "PNG (lossless) of the dataset's uint8 arrays"})
    if source in FILE_DATASETS:
        files = open_files(source, root, split, class_list)
        name = source
    elif Path(source).is_dir():
        folder = Path(source)
        if root:
            raise DatasetError("give either a folder or a dataset name with --root, not both")
        name = "image_folder" if (folder / split).is_dir() else "unlabeled_folder"
        files = open_files(name, folder, split if name == "image_folder" else "train",
                           class_list)
    else:
        raise DatasetError(f"'{source}' is neither a dataset name "
                           f"({', '.join(ARRAY_DATASETS + FILE_DATASETS)}) nor a folder")

    def file_item(i: int) -> tuple[str, bytes, int]:
        path = files.paths[i]
        try:
            with open(path, "rb") as f:
                return "jpg", f.read(), int(files.labels[i])
        except OSError as e:  # copied as-is, so a bad image is the loader's to count
            raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None

    return _Source(len(files), file_item, list(files.classes),
                   {"dataset": name, "split": files.split, "source": files.root,
                    "encoding": "the image files' bytes, copied (not re-encoded)"})


def write_shards(source: _Source, out: str | Path, shard_size: int = 10 ** 9, seed: int = 0,
                 prefix: str = "", log: Any = None) -> Manifest:
    """Write ``source`` as shards + ``manifest.json`` into ``out`` (created; must hold no
    shard set already).

    Samples go in the order of a permutation of ``seed``; a shard is closed once adding the
    next sample would pass ``shard_size`` bytes.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists() or any(out.glob("*.tar")):
        raise ShardError(f"{out}: already holds shards; write into an empty folder")
    if source.n == 0:
        raise DatasetError("the source holds no images")
    prefix = prefix or str(source.meta.get("split", "train")).replace("+", "_")
    order = np.random.default_rng(seed).permutation(source.n)
    shards: list[ShardInfo] = []
    state: dict[str, Any] = {}

    def close() -> None:
        tar, f, digest, tmp, name, count = (state.pop(k) for k in
                                            ("tar", "f", "digest", "tmp", "name", "count"))
        state.pop("bytes")
        tar.close()
        f.flush()
        os.fsync(f.fileno())
        size = f.tell()
        f.close()
        os.replace(tmp, out / name)
        shards.append(ShardInfo(name, count, size, digest.hexdigest()))
        if log:
            log(f"{name}: {count} samples, {size} bytes")

    class _Hashing(io.RawIOBase):
        def __init__(self, f: IO[bytes], digest: Any) -> None:
            self.f, self.digest = f, digest

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.digest.update(b)
            return self.f.write(b)

    def open_next() -> None:
        name = f"{prefix}-{len(shards):06d}.tar"
        tmp = out / f".{name}.tmp"
        f = open(tmp, "wb")
        digest = hashlib.sha256()
        tar = tarfile.open(fileobj=_Hashing(f, digest), mode="w|", format=tarfile.USTAR_FORMAT)
        state.update(tar=tar, f=f, digest=digest, tmp=tmp, name=name, count=0, bytes=0)

    for position, i in enumerate(order.tolist()):
        ext, data, label = source.item(i)
        key = f"{position:0{KEY_DIGITS}d}"
        cls = str(label).encode()
        need = 3 * BLOCK + len(data) + BLOCK - 1
        if state and state["count"] and state["bytes"] + need > shard_size:
            close()
        if not state:
            open_next()
        _tar_member(state["tar"], f"{key}.{ext}", data)
        _tar_member(state["tar"], f"{key}.cls", cls)
        state["count"] += 1
        state["bytes"] = state["f"].tell()
    close()
    manifest = Manifest(out / MANIFEST, shards, source.classes,
                        {**source.meta, "seed": seed, "shard_size": shard_size,
                         "source_index_order": "manifest position p holds source item "
                         f"permutation(seed={seed})[p] (numpy default_rng)"})
    _atomic_write(out / MANIFEST, (json.dumps(manifest.to_json(), indent=1) + "\n").encode())
    return manifest


# ---------------------------------------------------------------------------------------
# verify


def verify(root: str | Path, log: Any = None) -> Manifest:
    """Check every shard against the manifest: size, SHA-256, parse, sample count, keys.

    Raises:
        ShardError: The first mismatch found (its message names the shard).
    """
    manifest = load_manifest(root)
    offsets = manifest.offsets
    for i, s in enumerate(manifest.shards):
        path = manifest.folder / s.name
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != s.sha256:
            raise ShardError(f"{path}: SHA-256 {digest.hexdigest()[:16]}… differs from the "
                             f"manifest's {s.sha256[:16]}… (changed since written)")
        count = 0
        with open(path, "rb") as f:
            for k, sample in enumerate(iter_samples(f, str(path))):
                want = f"{offsets[i] + k:0{KEY_DIGITS}d}"
                if sample.key != want:
                    raise ShardError(f"{path}: sample {k} has key {sample.key}, expected {want}")
                if manifest.classes and not -1 <= sample.label < len(manifest.classes):
                    raise ShardError(f"{path}: {sample.key}.cls = {sample.label}, outside "
                                     f"0..{len(manifest.classes) - 1}")
                count += 1
        if count != s.samples:
            raise ShardError(f"{path}: {count} samples, the manifest lists {s.samples}")
        if log:
            log(f"{s.name}: ok ({count} samples)")
    return manifest


# ---------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dataroom.shards",
                                description="Write or verify WebDataset-layout tar shards.")
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="convert a dataset or folder to shards")
    w.add_argument("source", help="dataset name (" + ", ".join(ARRAY_DATASETS + FILE_DATASETS)
                   + ") or an image folder")
    w.add_argument("out", help="output folder (empty or new)")
    w.add_argument("--root", default="", help="the dataset's folder, with a dataset name")
    w.add_argument("--split", default="train")
    w.add_argument("--class-list", default=None)
    w.add_argument("--shard-size", default="1GB", help="bytes per shard (default 1GB)")
    w.add_argument("--seed", type=int, default=0, help="sample order permutation seed")
    w.add_argument("-q", "--quiet", action="store_true")
    v = sub.add_parser("verify", help="check sizes, checksums, counts and keys")
    v.add_argument("root", help="shard folder or its manifest.json")
    args = p.parse_args(argv)
    log = None if getattr(args, "quiet", False) else (lambda m: print(m, flush=True))
    try:
        if args.cmd == "write":
            try:
                size = parse_size(args.shard_size)
            except ValueError as e:
                raise DatasetError(f"--shard-size: {e}") from None
            src = open_source(args.source, args.root, args.split, args.class_list)
            m = write_shards(src, args.out, size, args.seed, log=log)
            print(f"wrote {m.num_samples} samples in {len(m.shards)} shards, "
                  f"{sum(s.bytes for s in m.shards)} bytes: {m.path}")
        else:
            m = verify(args.root, log=log)
            print(f"ok: {len(m.shards)} shards, {m.num_samples} samples ({m.path})")
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

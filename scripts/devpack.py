"""Pack the files a device run changed into one .tar.gz small enough for the device tool's 64 MB way back.

A classifier folder repeats its encoder's tensors (a frozen ResNet-18 is 45 MB each time), so safetensors files
travel as their header plus their tensors' bytes, each distinct tensor once; `unpack` rebuilds them byte for
byte (their sha256 is checked against the one taken at packing). A stamps.json (`training.reproduce`'s records)
joins the one already here: the run's entries win.

    python3 scripts/devpack.py pack --newer MARKER [--exclude GLOB ...] DIR... > pack.tar.gz
    python3 scripts/devpack.py unpack < pack.tar.gz
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import os
import struct
import sys
import tarfile
from pathlib import Path


def changed_files(dirs: list[str], newer: float, exclude: list[str]) -> list[Path]:
    files = [p for d in dirs if Path(d).is_dir() for p in sorted(Path(d).rglob("*")) if p.is_file()]
    return [p for p in files if p.stat().st_mtime > newer and not any(fnmatch.fnmatch(str(p), g) for g in exclude)]


def split_safetensors(data: bytes) -> tuple[bytes, list[bytes]]:
    """(the header bytes, each tensor's bytes in file order); raises if the tensors do not tile the data."""
    n = struct.unpack("<Q", data[:8])[0]
    header, body = data[:8 + n], data[8 + n:]
    spans = sorted(v["data_offsets"] for k, v in json.loads(header[8:]).items() if k != "__metadata__")
    if [s for s, _ in spans] != [0] + [e for _, e in spans[:-1]] or (spans and spans[-1][1] != len(body)):
        raise ValueError("tensors do not tile the file")
    return header, [body[s:e] for s, e in spans]


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pack(args) -> int:
    files = changed_files(args.dirs, os.stat(args.newer).st_mtime, args.exclude)
    blobs, total = set(), 0
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|gz") as tar:
        for p in files:
            data = p.read_bytes()
            total += len(data)
            if p.suffix != ".safetensors":
                add(tar, f"files/{p}", data)
                continue
            header, tensors = split_safetensors(data)
            keys = [hashlib.sha256(t).hexdigest() for t in tensors]
            for k, t in zip(keys, tensors):
                if k not in blobs:
                    blobs.add(k)
                    add(tar, f"blobs/{k}", t)
            recipe = {"path": str(p), "sha256": hashlib.sha256(data).hexdigest(), "header": header.hex(),
                      "tensors": keys}
            add(tar, f"st/{hashlib.sha256(str(p).encode()).hexdigest()}.json", json.dumps(recipe).encode())
    print(f"packed {len(files)} files ({total / 1e6:.1f} MB before deduplication)", file=sys.stderr)
    return 0


def unpack(args) -> int:
    blobs, recipes, n = {}, [], 0
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|gz") as tar:
        for m in tar:
            data = tar.extractfile(m).read()
            kind, _, rest = m.name.partition("/")
            if kind == "blobs":
                blobs[rest] = data
            elif kind == "st":
                recipes.append(json.loads(data))
            elif kind == "files":
                write(Path(rest), data)
                n += 1
    for r in recipes:
        data = bytes.fromhex(r["header"]) + b"".join(blobs[k] for k in r["tensors"])
        if hashlib.sha256(data).hexdigest() != r["sha256"]:
            raise SystemExit(f"error: {r['path']} rebuilt with the wrong sha256; the pack is damaged")
        write(Path(r["path"]), data)
        n += 1
    print(f"unpacked {n} files", file=sys.stderr)
    return 0


def write(path: Path, data: bytes) -> None:
    if path.is_absolute() or ".." in path.parts:
        raise SystemExit(f"error: refusing to write {path} outside the repository")
    if path.name == "stamps.json" and path.is_file():  # training.reproduce's records: the run's join the ones here
        data = json.dumps({**json.loads(path.read_text()), **json.loads(data)}, indent=2, sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="write the changed files of DIR... to stdout")
    pk.add_argument("dirs", nargs="+")
    pk.add_argument("--newer", required=True, help="pack only files modified after this file was")
    pk.add_argument("--exclude", action="append", default=[], help="a glob of paths to leave out (repeatable)")
    sub.add_parser("unpack", help="rebuild the files of a pack read from stdin, in the current folder")
    args = p.parse_args(argv)
    return pack(args) if args.cmd == "pack" else unpack(args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Write the built filter module as an OCI image layout that Istio can pull, without a Docker daemon.

The image is Istio's "compat" variant: one `application/vnd.oci.image.layer.v1.tar+gzip` layer whose
tar holds a single file, `plugin.wasm` (the same image `docker build` makes from the root Dockerfile).
The output is an OCI image layout directory (oci-layout, index.json, blobs/sha256/...), reproducible:
the same module gives the same digests (fixed tar metadata, gzip without a timestamp).

Usage: scripts/oci.py [--wasm PATH] [--out DIR] [--tag TAG]
Push it with any OCI tool, e.g. `skopeo copy oci:target/oci:<tag> docker://registry.example.com/idempotency-filter:<tag>`.
"""

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WASM = ROOT / "target/wasm32-wasip1/release/idempotency_filter.wasm"
DEFAULT_OUT = ROOT / "target/oci"

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def crate_version() -> str:
    with open(ROOT / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["package"]["version"]


def layer_tar(module: bytes) -> bytes:
    """An uncompressed tar with one regular file, plugin.wasm, with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("plugin.wasm")
        info.size = len(module)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(module))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(data)
    return buf.getvalue()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Layout:
    def __init__(self, out: Path):
        self.out = out
        self.blobs = out / "blobs" / "sha256"

    def put(self, data: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (self.blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def build(wasm: Path, out: Path, tag: str) -> dict:
    module = wasm.read_bytes()
    if module[:4] != b"\0asm":
        raise SystemExit(f"{wasm} is not a WebAssembly module (run `make build`)")
    tar = layer_tar(module)
    layer = gzip_bytes(tar)

    # Start from an empty directory so no stale blob of an earlier build is left behind.
    if out.exists():
        shutil.rmtree(out)
    layout = Layout(out)
    layout.blobs.mkdir(parents=True)

    layer_desc = layout.put(layer, MT_LAYER)
    layer_desc["annotations"] = {"org.opencontainers.image.title": "plugin.wasm"}
    # Wasm is architecture-neutral; linux/amd64 is what `docker build` of the root Dockerfile records
    # and what registries and tools expect of a single-platform image.
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
    }
    config_desc = layout.put(canonical_json(config), MT_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config_desc,
        "layers": [layer_desc],
        "annotations": {
            "org.opencontainers.image.title": "idempotency-filter",
            "org.opencontainers.image.description": "Envoy proxy-wasm idempotency-key filter (Istio compat Wasm image)",
            "org.opencontainers.image.version": tag,
        },
    }
    manifest_desc = layout.put(canonical_json(manifest), MT_MANIFEST)
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [manifest_desc]}
    (out / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (out / "index.json").write_bytes(canonical_json(index))
    return {
        "layout": str(out),
        "tag": tag,
        "manifest": manifest_desc["digest"],
        "layer": layer_desc["digest"],
        "module_sha256": hashlib.sha256(module).hexdigest(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wasm", type=Path, default=DEFAULT_WASM)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--tag", default=None, help="image tag (default: the crate version)")
    args = ap.parse_args()
    if not args.wasm.is_file():
        print(f"{args.wasm} is missing: run `make build`", file=sys.stderr)
        return 1
    result = build(args.wasm, args.out, args.tag or crate_version())
    for k, v in result.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

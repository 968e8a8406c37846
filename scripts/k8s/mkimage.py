#!/usr/bin/env python3
"""Packs a root file system directory into a single-layer OCI image archive, without Docker.

usage: mkimage.py ROOTFS REF OUT.tar [--entrypoint JSON] [--cmd JSON] [--user U] [--env K=V]...

The archive is an OCI image layout in a tar (`ctr images import` reads it; so do podman, skopeo and
`docker load` from version 25). Files are owned by root with a fixed mtime, so the same tree gives
the same digest. The layer is compressed at level 1: these images are imported once, locally.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(rootfs):
    def owned_by_root(info):
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(rootfs)):
            tar.add(os.path.join(rootfs, name), arcname=name, filter=owned_by_root)
    return buf.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rootfs")
    ap.add_argument("ref")
    ap.add_argument("out")
    ap.add_argument("--entrypoint")
    ap.add_argument("--cmd")
    ap.add_argument("--user")
    ap.add_argument("--env", action="append", default=[])
    a = ap.parse_args()

    layer = layer_tar(a.rootfs)
    layer_gz = gzip.compress(layer, compresslevel=1, mtime=0)
    config = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + a.env,
        "WorkingDir": "/",
    }
    if a.entrypoint:
        config["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        config["Cmd"] = json.loads(a.cmd)
    if a.user:
        config["User"] = a.user
    image_config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "scripts/k8s/mkimage.py"}],
    }, separators=(",", ":")).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(image_config), "size": len(image_config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(layer_gz), "size": len(layer_gz)}],
    }, separators=(",", ":")).encode()
    tag = a.ref.rsplit(":", 1)[1] if ":" in a.ref.rsplit("/", 1)[-1] else "latest"
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": digest(manifest), "size": len(manifest),
                       "annotations": {"io.containerd.image.name": a.ref,
                                       "org.opencontainers.image.ref.name": tag}}],
    }).encode()
    with tarfile.open(a.out, "w") as tar:
        add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add(tar, "index.json", index)
        for blob in (layer_gz, image_config, manifest):
            add(tar, "blobs/sha256/" + digest(blob).split(":", 1)[1], blob)
    print(f"{a.ref}: {len(layer)} bytes ({len(layer_gz)} compressed), manifest {digest(manifest)}")


if __name__ == "__main__":
    main()

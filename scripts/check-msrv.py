#!/usr/bin/env python3
"""Check the MSRV claim where no toolchain of that version is installed.

Reads `cargo metadata` (all features) and walks the normal and build dependencies of every
published workspace crate (dev-dependencies such as bench peers build only here, not for
users). Fails when one of them declares a `rust-version` newer than the workspace's. Together
with clippy's `incompatible_msrv` lint (which flags standard-library APIs newer than
`rust-version`, and which CI runs with -D warnings), this is what can be verified without a
build on that toolchain; .ci/run builds with it when `rustup` has it.

Usage: scripts/check-msrv.py   (from anywhere in the workspace)
"""
import json
import subprocess
import sys


def version(text):
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    members = [packages[i] for i in meta["workspace_members"]]
    published = [p for p in members if p.get("publish") != []]
    msrv = {p["rust_version"] for p in published if p.get("rust_version")}
    if len(msrv) != 1:
        sys.exit(f"published crates disagree on rust-version: {sorted(msrv)}")
    msrv = msrv.pop()

    # Every package reachable from a published crate through normal or build edges.
    seen, todo = set(), [p["id"] for p in published]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for dep in nodes[pid]["deps"]:
            if any(k["kind"] in (None, "build") for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])

    too_new = sorted(
        (packages[pid]["name"], packages[pid]["version"], packages[pid]["rust_version"])
        for pid in seen
        if packages[pid].get("rust_version")
        and version(packages[pid]["rust_version"]) > version(msrv)
    )
    for name, ver, rv in too_new:
        print(f"{name} {ver} needs Rust {rv} > MSRV {msrv}", file=sys.stderr)
    if too_new:
        sys.exit(1)
    print(f"MSRV {msrv}: {len(seen)} packages (published crates and their normal/build "
          f"dependencies, all features) declare no newer rust-version")


if __name__ == "__main__":
    main()

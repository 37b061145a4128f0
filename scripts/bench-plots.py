#!/usr/bin/env python3
"""Turn criterion's results into one PNG chart per benchmark group, peers beside ours.

    cargo bench -p palisade --bench circuit_breaker      # any bench(es): results land in
    python3 scripts/bench-plots.py                       # target/criterion, charts in docs/img/bench

Reads every `target/criterion/**/new/benchmark.json` (the group and row ids) with the
`estimates.json` beside it (median and its 95 % confidence interval) and draws, for each group,
a horizontal bar per row: time per iteration on the bottom axis, the confidence interval as an
error bar, the median written beside it. Rows of peer libraries and baselines are drawn in
grey: a row is a peer's when one of its id's parts names a dev-dependency of the `palisade`
facade (crates/palisade/Cargo.toml, where every bench's peers are declared) that is not a
palisade crate or a tool (criterion, tokio, ...), when it says `naive` or `baseline`, or, in a
group where some rows name `palisade`, when it does not. Nothing here names a bench or a group, so a group added later
gets its chart on the next run without editing this script. A chart is named after its
group, as criterion names its folders.

Options: --criterion DIR (default target/criterion), --out DIR (default docs/img/bench),
--only GROUP... (only these groups). Needs matplotlib (`pip install matplotlib`).
"""

import argparse
import json
import math
import pathlib
import re
import sys
import tomllib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Dev-dependencies of the facade that are tools, not peers measured against.
TOOLS = {
    "criterion", "tokio", "axum", "tower", "http", "http_body_util", "serde_json",
    "futures", "rand", "tempfile", "hyper", "reqwest", "redis", "deadpool_redis",
}
OURS = "#1f6feb"
PEER = "#9aa0a6"


def norm(name):
    return name.replace("-", "_").lower()


def peer_names():
    manifest = ROOT / "crates" / "palisade" / "Cargo.toml"
    try:
        deps = tomllib.loads(manifest.read_text()).get("dev-dependencies", {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        print(f"warning: cannot read {manifest}: {e}; no row is drawn as a peer", file=sys.stderr)
        return set()
    return {norm(d) for d in deps if not norm(d).startswith("palisade") and norm(d) not in TOOLS}


# Words that mark a row as a baseline written for the bench (a plain scan, a bare map).
BASELINE_WORDS = ("naive", "baseline")


def is_peer(row_id, peers):
    parts = re.split(r"[/\s]+", norm(row_id))
    return any(p == peer or p.startswith(peer + "_") or p.startswith(peer + "::")
               for p in parts for peer in peers) or any(
        w in p for p in parts for w in BASELINE_WORDS)


def load(criterion_dir, only):
    groups = {}
    for bench in sorted(criterion_dir.glob("**/new/benchmark.json")):
        estimates = bench.with_name("estimates.json")
        if not estimates.exists():
            continue
        try:
            meta = json.loads(bench.read_text())
            median = json.loads(estimates.read_text())["median"]
        except (OSError, ValueError, KeyError) as e:
            print(f"warning: skipping {bench.parent}: {e}", file=sys.stderr)
            continue
        group = meta["group_id"]
        if only and group not in only:
            continue
        row = "/".join(p for p in (meta.get("function_id"), meta.get("value_str")) if p)
        ci = median["confidence_interval"]
        groups.setdefault(group, []).append(
            (row or group, median["point_estimate"], ci["lower_bound"], ci["upper_bound"]))
    return groups


UNITS = [(1e9, "s"), (1e6, "ms"), (1e3, "µs"), (1.0, "ns")]


def unit_for(values):
    top = max(values)
    for scale, name in UNITS:
        if top >= scale * 1.0 or scale == 1.0:
            return scale, name
    return 1.0, "ns"


def human(ns):
    for scale, name in UNITS:
        if ns >= scale or scale == 1.0:
            v = ns / scale
            return f"{v:.3g} {name}" if v < 100 else f"{v:.0f} {name}"
    return f"{ns:.3g} ns"


def slug(group):
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", group).strip("-") or "group"


def draw(group, rows, peers, out):
    # Rows sorted by their id's first part, then by size when the id ends in a number (a
    # scaling series reads in order), else by median: each operation's rows (ours and the
    # peers') sit together, fastest first.
    def order(r):
        parts = r[0].split("/")
        size = float(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else math.inf
        return (parts[0], size, r[1])
    rows = sorted(rows, key=order)
    scale, unit = unit_for([r[3] for r in rows])
    medians = [r[1] / scale for r in rows]
    lows = [max(r[1] - r[2], 0) / scale for r in rows]
    highs = [max(r[3] - r[1], 0) / scale for r in rows]
    # A row naming a peer library is a peer's; so is, in a group where some rows name
    # palisade, every row that does not (baselines such as `std_env_var/get`).
    named = any("palisade" in r[0].lower() for r in rows)
    colours = [PEER if is_peer(r[0], peers) or (named and "palisade" not in r[0].lower())
               else OURS for r in rows]
    spread = max(medians) / max(min(medians), 1e-12)
    height = 1.0 + 0.38 * len(rows)
    fig, ax = plt.subplots(figsize=(8.5, height))
    y = list(range(len(rows)))
    ax.barh(y, medians, xerr=[lows, highs], color=colours, ecolor="#444", capsize=2, height=0.65)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    if spread > 50:
        ax.set_xscale("log")
    ax.set_xlabel(f"time per iteration ({unit}, median, 95 % CI){' — log scale' if spread > 50 else ''}",
                  fontsize=8)
    ax.set_title(group, fontsize=10, loc="left")
    ax.tick_params(axis="x", labelsize=8)
    for yi, (row, m, h) in enumerate(zip(rows, medians, highs)):
        ax.text(m + h, yi, "  " + human(row[1]), va="center", fontsize=7)
    right = max(m + h for m, h in zip(medians, highs))
    ax.set_xlim(right=right * (4 if spread > 50 else 1.25))
    handles = [plt.Rectangle((0, 0), 1, 1, color=OURS, label="palisade")]
    if PEER in colours:
        handles.append(plt.Rectangle((0, 0), 1, 1, color=PEER, label="peer or baseline"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = out / f"{slug(group)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--criterion", type=pathlib.Path, default=ROOT / "target" / "criterion")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "img" / "bench")
    ap.add_argument("--only", nargs="*", default=[])
    args = ap.parse_args()
    groups = load(args.criterion, set(args.only))
    if not groups:
        print(f"no criterion results under {args.criterion}: run `cargo bench` first", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    peers = peer_names()
    for group, rows in sorted(groups.items()):
        path = draw(group, rows, peers, args.out)
        print(f"{group}: {len(rows)} rows -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

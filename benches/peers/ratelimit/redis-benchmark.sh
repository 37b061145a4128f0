#!/usr/bin/env bash
# The ceiling for the Redis store: redis-benchmark running palisade-ratelimit's own acquire
# script (GCRA, one key, one quota) with EVALSHA against the server at $PORT, 64 clients.
# Usage: benches/peers/ratelimit/redis-benchmark.sh [PORT] [CLIENTS] [REQUESTS]
set -euo pipefail
PORT="${1:-6379}"
CLIENTS="${2:-64}"
REQUESTS="${3:-200000}"
DIR="$(cd "$(dirname "$0")/../../../crates/ratelimit/src/lua" && pwd)"
SCRIPT="$(cat "$DIR/common.lua" "$DIR/acquire.lua")"
SHA="$(redis-cli -p "$PORT" SCRIPT LOAD "$SCRIPT")"
# KEYS[1] = the state key; ARGV = now (0: TIME), gcra, cost 1, 1 quota,
# limit 1e9, burst 1e9, period 3600 s in µs, interval 4 µs (1e9 per hour).
redis-benchmark -p "$PORT" -c "$CLIENTS" -n "$REQUESTS" -q \
  EVALSHA "$SHA" 1 "bench:{redis-benchmark:hot}:q:gcra" 0 gcra 1 1 1000000000 1000000000 3600000000 4 \
  | tr '\r' '\n' | grep "requests per second"
# The same with 64 requests pipelined per client connection (the multiplexed-connection shape).
redis-benchmark -p "$PORT" -c 1 -P 64 -n "$REQUESTS" -q \
  EVALSHA "$SHA" 1 "bench:{redis-benchmark:hot}:q:gcra" 0 gcra 1 1 1000000000 1000000000 3600000000 4 \
  | tr '\r' '\n' | grep "requests per second"

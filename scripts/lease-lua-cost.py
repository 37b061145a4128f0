#!/usr/bin/env python3
"""What a lease call costs Redis, in instructions (docs/benchmarks.md, "the lease call's
Redis cost"; issue 19).

Starts a throwaway redis-server under `valgrind --tool=callgrind` (instrumentation on, but
counted only between `callgrind_control -z` and `-d` around each scenario), loads the GCRA
batch script and the plain acquire script built from a checkout's `crates/ratelimit/src/lua`
the way `src/redis.rs` builds them, and prints the instructions per item of:

* the plain acquire script on fresh keys, then on the same keys;
* a key's first lease in batches of 14 items, a renewal by the same owner (5 of 16 units
  held, a ledger record), another owner's first lease on those keys (leases of 10 minutes:
  no record is reclaimed and no held unit goes stale during a run, however slow);
* a key's first lease alone in a batch;
* a first lease and a renewal without a ledger (owner 0: strict mode, `reclaim(false)`),
  what the ledger's reads and writes cost an item.

The count does not depend on the machine's load, so two checkouts can be compared on a
loaded machine:

    python3 scripts/lease-lua-cost.py /path/to/checkout-before /path/to/checkout-after

Needs redis-server, valgrind and callgrind_control on PATH. Lease items carry as many lease
arguments as the checkout's `LEASE_ARGS` (src/redis.rs), zeros after the twelfth, in the
checkout's item format: one MessagePack argument per item when its batch.lua reads item
format 'pb2' (src/redis/pack.rs), each argument on its own before. A run stops at an item
that answered an error: its count would flatter the format that failed it.
"""

import glob
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

POLICY = [1_000_000_000, 1_000_000_000, 3_600_000_000, 4]  # Quota::per_hour(1e9)
# The leases' lifetime (µs). The fleet bench leases for 10 s, but under valgrind on a loaded
# machine the scenarios of one checkout can take longer than that: a renewal would then find
# its held units stale and another owner's lease would reclaim the first owner's record
# first, and the counts would depend on the load. 10 minutes: no scenario outlives it.
LIFETIME = 600_000_000


class Redis:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    @staticmethod
    def enc(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.s.recv(1 << 16)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.s.recv(1 << 16)
            value, self.buf = self.buf[:n], self.buf[n + 2 :]
            return value.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError(line)

    def pipe(self, cmds):
        out = []
        for i in range(0, len(cmds), 200):
            chunk = cmds[i : i + 200]
            self.s.sendall(b"".join(self.enc(*c) for c in chunk))
            out += [self.read() for _ in chunk]
        return out

    def __call__(self, *args):
        return self.pipe([args])[0]


def scripts(checkout):
    lua = os.path.join(checkout, "crates/ratelimit/src/lua")
    read = lambda f: open(os.path.join(lua, f)).read()
    common, gcra, ledger = read("common.lua"), read("gcra.lua"), read("ledger.lua")
    if "local function begin(" in common:  # definitions once per batch (db91382 on)
        ops = (
            common + gcra + ledger
            + "ops['gcra:lease'] = function(KEYS, ARGV)\n" + read("lease.lua")
            + "\nend\nops['gcra:release'] = function(KEYS, ARGV)\n" + read("release.lua") + "\nend\n"
        )
    else:  # each operation the whole single-key script
        ops = (
            "ops['gcra:lease'] = function(KEYS, ARGV)\n" + common + gcra + ledger + read("lease.lua")
            + "\nend\nops['gcra:release'] = function(KEYS, ARGV)\n" + common + gcra + ledger
            + read("release.lua") + "\nend\n"
        )
    text = "local ops = {}\n" + ops + read("batch.lua")
    batch = "".join(l + "\n" for l in text.splitlines() if not l.lstrip().startswith("--"))
    rs = open(os.path.join(checkout, "crates/ratelimit/src/redis.rs")).read()
    lease_args = int(re.search(r"const LEASE_ARGS: usize = (\d+);", rs).group(1))
    packed = "'pb2'" in read("batch.lua")
    return batch, common + gcra + read("acquire.lua"), lease_args, packed


def msgpack(value):
    """MessagePack of an int (non-negative), a str or a list of them (src/redis.rs `Pack`)."""
    if isinstance(value, list):
        head = bytes([0x90 | len(value)]) if len(value) < 16 else b"\xdc" + len(value).to_bytes(2, "big")
        return head + b"".join(msgpack(v) for v in value)
    if isinstance(value, str):
        b = value.encode()
        return (bytes([0xA0 | len(b)]) if len(b) < 32 else b"\xd9" + bytes([len(b)])) + b
    for limit, tag, size in ((1 << 7, None, 0), (1 << 8, 0xCC, 1), (1 << 16, 0xCD, 2), (1 << 32, 0xCE, 4)):
        if value < limit:
            return (bytes([tag]) if tag else b"") + value.to_bytes(size or 1, "big")
    return b"\xcf" + value.to_bytes(8, "big")


def lease_item(key, fmt, held=0, held_at=0, owner=7, report=1, held_life=0):
    """One lease item of the batch script, in the checkout's item format `fmt` (its
    `LEASE_ARGS`, whether items are packed)."""
    lease_args, packed = fmt
    args = [0, "gcra", 1, 1] + POLICY
    args += [held, held_at, 16, LIFETIME, 100, str(owner), 0, 0, 1_000_000, report, held_life, 0]
    args += [0] * (lease_args - 12)
    keys = ["{fleet-bench:%s}" % key, "{fleet-bench:%s}:#leases" % key]
    if packed:
        return keys, [msgpack("pb2") + msgpack("gcra:lease") + msgpack(args)]
    return keys, ["gcra:lease", 2, len(args)] + args


def batch_call(sha, items):
    keys, argv = [], [len(items)]
    for k, a in items:
        keys += k
        argv += a
    return ["EVALSHA", sha, len(keys)] + keys + argv


def main():
    checkouts = sys.argv[1:] or ["."]
    port = 6400 + os.getpid() % 500
    out_dir = tempfile.mkdtemp(prefix="lease-lua-cost-")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=%s/cg.%%p" % out_dir,
         # hz 1: Redis' cron (10 times a second by default) runs within the counted
         # window more often the slower valgrind runs, and would count for the scripts.
         "redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--hz", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                r = Redis(port)
                r("PING")
                break
            except (OSError, RuntimeError):
                time.sleep(0.2)
        else:
            sys.exit("redis-server under valgrind did not start")

        def measure(cmds, per_call):
            r("PING")
            subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True)
            replies = r.pipe(cmds)
            before = set(glob.glob(out_dir + "/cg.*"))
            subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True)
            dump = sorted(set(glob.glob(out_dir + "/cg.*")) - before, key=os.path.getmtime)[-1]
            total = next(int(l.split()[1]) for l in open(dump) if l.startswith(("summary:", "totals:")))
            os.remove(dump)
            # A count of failed items would flatter the format that failed them.
            for reply in replies:
                for item in reply if isinstance(reply[0], list) else [reply]:
                    if item[0] == "error":
                        sys.exit("%s: an item failed: %s" % (checkout, item[1]))
            return total / (len(cmds) * per_call), replies

        B, N = 14, 30
        for checkout in checkouts:
            batch, acquire, lease_args, packed = scripts(checkout)
            fmt = (lease_args, packed)
            sha, asha = r("SCRIPT", "LOAD", batch), r("SCRIPT", "LOAD", acquire)
            r("FLUSHALL")
            print("== %s" % checkout)
            plain = [["EVALSHA", asha, 1, "a%d" % i, 0, "gcra", 1, 1] + POLICY for i in range(B * N)]
            for label in ("plain acquire, fresh key", "plain acquire, existing key"):
                ir, _ = measure(plain, 1)
                print("%-52s %8.0f instructions/item" % (label, ir))
            keys = [["p%d" % (i * B + j) for j in range(B)] for i in range(N)]
            ir, replies = measure([batch_call(sha, [lease_item(k, fmt) for k in ks]) for ks in keys], B)
            print("%-52s %8.0f instructions/item" % ("lease, first on a fresh key (batch of 14)", ir))
            granted_at = [item[5] for reply in replies for item in reply]
            ir, _ = measure([batch_call(sha, [
                lease_item(k, fmt, held=5, held_at=granted_at[i * B + j], report=2, held_life=LIFETIME)
                for j, k in enumerate(ks)]) for i, ks in enumerate(keys)], B)
            print("%-52s %8.0f instructions/item" % ("renewal, same owner (batch of 14)", ir))
            ir, _ = measure([batch_call(sha, [lease_item(k, fmt, owner=8) for k in ks]) for ks in keys], B)
            print("%-52s %8.0f instructions/item" % ("first lease of a 2nd owner, key with a record (14)", ir))
            ir, _ = measure([batch_call(sha, [lease_item("q%d" % i, fmt)]) for i in range(B * N)], 1)
            print("%-52s %8.0f instructions/item" % ("lease, first on a fresh key (batch of 1)", ir))
            # Without a ledger (owner 0: `LeaseConfig::strict()`, `reclaim(false)`): what the
            # ledger's reads and writes cost a lease item.
            keys = [["n%d" % (i * B + j) for j in range(B)] for i in range(N)]
            ir, replies = measure([batch_call(sha, [lease_item(k, fmt, owner=0, report=0) for k in ks]) for ks in keys], B)
            print("%-52s %8.0f instructions/item" % ("lease, first on a fresh key, no ledger (14)", ir))
            granted_at = [item[5] for reply in replies for item in reply]
            ir, _ = measure([batch_call(sha, [
                lease_item(k, fmt, held=5, held_at=granted_at[i * B + j], owner=0, report=0, held_life=LIFETIME)
                for j, k in enumerate(ks)]) for i, ks in enumerate(keys)], B)
            print("%-52s %8.0f instructions/item" % ("renewal, no ledger (batch of 14)", ir))
    finally:
        server.terminate()
        server.wait()
        for f in glob.glob(out_dir + "/*"):
            os.remove(f)
        os.rmdir(out_dir)


if __name__ == "__main__":
    main()

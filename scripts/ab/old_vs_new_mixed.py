#!/usr/bin/env python3
"""Two nightshift binaries side by side on the bench's `mixed` scenario, run directly
(vCPU0 computes, vCPU1 closed-loop 4 KiB reads at queue depth 1, one XTS pass, vCPUs
pinned 1:1), the binaries alternating within each repetition; prints medians [min-max].

    OLD=/path/to/old/nightshift NEW=target/release/nightshift scripts/ab/old_vs_new_mixed.py [reps]

Each binary boots its own built-in test guest. Used for docs/results/README.md."""
import subprocess, statistics, sys, os
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
bins = {"old": os.path.abspath(os.environ["OLD"]), "new": os.path.abspath(os.environ["NEW"])}
work = os.environ.get("AB_DIR", "/tmp/nightshift-ab")
os.makedirs(work, exist_ok=True)
os.chdir(work)
if not os.path.exists("da.img"):
    with open("da.img", "wb") as f:
        f.truncate(64 << 20)
cmdline = "workload=compute,blk blk_mode=randread blk_qd=1 ms=1500"
variants = [(b, p, i) for p, i in (("workers", "kernel"), ("idle", "user"), ("workers", "user")) for b in ("old", "new")]
res = {v: [] for v in variants}
for rep in range(reps):
    for v in variants:
        b, pol, irq = v
        cmd = [bins[b], "run", "--console-in", "none", "--disk", "da.img,xts=1", "--pin", "0=0", "--pin", "1=1",
               "--policy", pol, "--irqchip", irq, "--cmdline", cmdline, "--report", "r.json", "--overwrite"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        kv = {}
        for line in out.splitlines():
            if line.startswith("result ") and "workload=blk" in line:
                kv = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
        res[v].append((int(kv["lat_us_p50"]), int(kv["iops"])))
        print(f"rep {rep+1} {v}: {res[v][-1]}", file=sys.stderr, flush=True)
print(f"{reps} alternating repetitions; medians [min-max]\n")
print("| binary | policy/irqchip | p50 µs | IOPS |\n|---|---|---|---|")
for v in variants:
    p = [x[0] for x in res[v]]; i = [x[1] for x in res[v]]
    print(f"| {v[0]} | {v[1]}/{v[2]} | {statistics.median(p):.0f} [{min(p)}-{max(p)}] | {statistics.median(i):.0f} [{min(i)}-{max(i)}] |")

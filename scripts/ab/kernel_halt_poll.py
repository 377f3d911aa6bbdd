#!/usr/bin/env python3
"""KVM's halt polling on and off (`--halt-poll-ns 0`) under `idle` and `workers` with the
kernel irqchip, on the bench's `mixed` and `bursty` block scenarios run directly (vCPUs
pinned 1:1, one XTS pass), variants alternating within each repetition; prints medians
[min-max] of the mean of the I/O vCPUs' p50 and the summed IOPS.

    NIGHTSHIFT=target/release/nightshift scripts/ab/kernel_halt_poll.py [reps]

Used for docs/results/README.md."""
import subprocess, statistics, sys, os
N = os.path.abspath(os.environ.get("NIGHTSHIFT", "target/release/nightshift"))
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 4
work = os.environ.get("AB_DIR", "/tmp/nightshift-ab")
os.makedirs(work, exist_ok=True)
os.chdir(work)
for d in ("da.img", "db.img"):
    if not os.path.exists(d):
        with open(d, "wb") as f:
            f.truncate(64 << 20)
sc = {"mixed": (["--disk", "da.img,xts=1"], "workload=compute,blk blk_mode=randread blk_qd=1 ms=1500"),
      "bursty": (["--disk", "da.img,xts=1", "--disk", "db.img,xts=1"], "workload=blk blk_mode=randread blk_qd=1 blk_burst=16 blk_think_us=5000 ms=1500")}
variants = [("idle", []), ("idle, KVM halt-poll 0", ["--halt-poll-ns", "0"]), ("workers", ["--policy", "workers"]), ("workers, KVM halt-poll 0", ["--policy", "workers", "--halt-poll-ns", "0"])]
res = {}
for rep in range(reps):
    for s, (disks, cmdl) in sc.items():
        for name, flags in variants:
            cmd = [N, "run", "--console-in", "none", "--pin", "0=0", "--pin", "1=1", "--cmdline", cmdl, "--report", "r.json", "--overwrite"] + disks + flags
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
            p50, iops = [], 0
            for line in out.splitlines():
                if line.startswith("result ") and "workload=blk" in line:
                    kv = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
                    p50.append(int(kv["lat_us_p50"])); iops += int(kv["iops"])
            res.setdefault((s, name), []).append((statistics.mean(p50), iops))
            print(rep, s, name, res[(s, name)][-1], file=sys.stderr, flush=True)
print("| scenario | variant | p50 µs | IOPS |\n|---|---|---|---|")
for (s, name), v in res.items():
    p = [x[0] for x in v]; i = [x[1] for x in v]
    print(f"| {s} | {name} | {statistics.median(p):.0f} [{min(p):.0f}-{max(p):.0f}] | {statistics.median(i):.0f} [{min(i)}-{max(i)}] |")

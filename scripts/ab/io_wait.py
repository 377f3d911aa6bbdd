#!/usr/bin/env python3
"""Serving a notify at its exit when the guest waits for its I/O (`--io-wait-us`, under
`idle`, where block notifications exit by default) against the idle policy's other
paths (the work waits for a halt, with ioeventfd or exit notifications) and `workers`,
on the bench's `mixed` and `bursty` scenarios run directly (vCPUs pinned 1:1, one XTS pass,
4 KiB random reads at queue depth 1), variants alternating within each repetition;
prints medians [min-max] of the I/O p50 (mean over the I/O vCPUs), IOPS (sum), and in
`mixed` vCPU0's compute rate (Mi iterations/ms; the bench's %solo divides this by a
solo run's).

    NS=target/release/nightshift scripts/ab/io_wait.py [reps]

Used for docs/results/README.md."""
import subprocess, statistics, sys, os
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
ns = os.path.abspath(os.environ.get("NS", "target/release/nightshift"))
work = os.environ.get("AB_DIR", "/tmp/nightshift-ab")
os.makedirs(work, exist_ok=True)
os.chdir(work)
for img in ("da.img", "db.img"):
    if not os.path.exists(img):
        with open(img, "wb") as f:
            f.truncate(64 << 20)
blk = "blk_mode=randread blk_size=4096 blk_qd=1 blk_ops=0 ms=1500"
scenarios = {
    "mixed": (["--disk", "da.img,xts=1"], f"workload=compute,blk {blk}"),
    "bursty": (["--disk", "da.img,xts=1", "--disk", "db.img,xts=1"],
               f"workload=blk {blk} blk_burst=16 blk_think_us=5000"),
}
variants = {
    "workers": ["--policy", "workers"],
    "idle, halt only": ["--policy", "idle", "--io-wait-us", "0"],
    "idle, exit": ["--policy", "idle", "--notify", "exit", "--io-wait-us", "0"],
    "idle, exit, io-wait (default)": ["--policy", "idle"],
    "idle/user, halt only": ["--policy", "idle", "--irqchip", "user", "--io-wait-us", "0"],
    "idle/user, exit": ["--policy", "idle", "--irqchip", "user", "--notify", "exit", "--io-wait-us", "0"],
    "idle/user, exit, io-wait (default)": ["--policy", "idle", "--irqchip", "user"],
}
res = {(s, v): [] for s in scenarios for v in variants}
for rep in range(reps):
    for s, (disks, cmdline) in scenarios.items():
        for v, flags in variants.items():
            cmd = [ns, "run", "--console-in", "none", *disks, "--pin", "0=0", "--pin", "1=1", *flags,
                   "--cmdline", cmdline, "--report", "r.json", "--overwrite"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
            p50s, iops, rate = [], 0, None
            for line in out.splitlines():
                if not line.startswith("result "):
                    continue
                kv = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
                if kv.get("workload") == "blk":
                    p50s.append(int(kv["lat_us_p50"]))
                    iops += int(kv["iops"])
                elif kv.get("workload") == "compute":
                    rate = int(kv["iters_per_ms"]) / 1e6
            row = (statistics.mean(p50s), iops, rate)
            res[(s, v)].append(row)
            print(f"rep {rep+1} {s} {v}: p50 {row[0]:.0f} iops {row[1]} rate {rate}", file=sys.stderr, flush=True)
def med(xs, f):
    xs = [x for x in xs if x is not None]
    return f"{f(statistics.median(xs))} [{f(min(xs))}-{f(max(xs))}]" if xs else "-"
print(f"{reps} alternating repetitions; medians [min-max]\n")
print("| scenario | variant | p50 µs | IOPS | vCPU0 Mi iters/ms |\n|---|---|---|---|---|")
for (s, v), rows in res.items():
    print(f"| {s} | {v} | {med([r[0] for r in rows], lambda x: f'{x:.0f}')} | "
          f"{med([r[1] for r in rows], lambda x: f'{x:.0f}')} | "
          f"{med([r[2] for r in rows], lambda x: f'{x:.3f}') if s == 'mixed' else '-'} |")

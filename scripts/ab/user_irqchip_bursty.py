#!/usr/bin/env python3
"""A/B of the userspace irqchip's PV EOI and halt polling on the bench's `bursty` block
scenario, run directly (2 vCPUs pinned 1:1, each with its own disk, bursts of 16 reads,
5 ms think): each switched off on its own (`pv_eoi=0` on the guest command line,
`--halt-poll-ns 0`). Variants alternate within each repetition; prints medians [min-max]
of the mean of both vCPUs' p50 and the summed IOPS.

    NIGHTSHIFT=target/release/nightshift scripts/ab/user_irqchip_bursty.py [reps]

Used for docs/results/README.md."""
import json, subprocess, statistics, sys, os
N = os.path.abspath(os.environ.get("NIGHTSHIFT", "target/release/nightshift"))
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
work = os.environ.get("AB_DIR", "/tmp/nightshift-ab")
os.makedirs(work, exist_ok=True)
os.chdir(work)
for d in ("da.img", "db.img"):
    if not os.path.exists(d):
        with open(d, "wb") as f: f.truncate(64 << 20)
base_cmd = "workload=blk blk_mode=randread blk_qd=1 blk_burst=16 blk_think_us=5000 ms=1500"
variants = [
    ("workers (kernel irqchip)", ["--policy", "workers"], ""),
    ("workers/user", ["--policy", "workers", "--irqchip", "user"], ""),
    ("workers/user, no PV EOI", ["--policy", "workers", "--irqchip", "user"], "pv_eoi=0"),
    ("workers/user, no polling", ["--policy", "workers", "--irqchip", "user", "--halt-poll-ns", "0"], ""),
    ("workers/user, neither", ["--policy", "workers", "--irqchip", "user", "--halt-poll-ns", "0"], "pv_eoi=0"),
    ("idle/user", ["--policy", "idle", "--irqchip", "user"], ""),
    ("idle/user, no PV EOI", ["--policy", "idle", "--irqchip", "user"], "pv_eoi=0"),
    ("idle/user, no polling", ["--policy", "idle", "--irqchip", "user", "--halt-poll-ns", "0"], ""),
    ("idle/user, neither", ["--policy", "idle", "--irqchip", "user", "--halt-poll-ns", "0"], "pv_eoi=0"),
]
res = {v[0]: [] for v in variants}
for rep in range(reps):
    for name, flags, extra in variants:
        cmd = [N, "run", "--console-in", "none", "--disk", "da.img,xts=1", "--disk", "db.img,xts=1",
               "--pin", "0=0", "--pin", "1=1", "--cmdline", f"{base_cmd} {extra}".strip(),
               "--report", "r.json", "--overwrite"] + flags
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        p50s, iops = [], 0
        for line in out.splitlines():
            if line.startswith("result "):
                kv = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
                p50s.append(int(kv["lat_us_p50"])); iops += int(kv["iops"])
        r = json.load(open("r.json"))
        v = r["vcpus"]
        ops = max(1, iops * 1.5)
        res[name].append((statistics.mean(p50s), iops,
                          sum(c["exits"] for c in v) / ops,
                          sum(c["mmio_exits"] for c in v) / ops,
                          sum(c.get("signal_kicks", 0) for c in v) / ops,
                          sum(c.get("halt_polls_ok", 0) for c in v) / ops,
                          sum(c.get("halt_poll_ns", 0) for c in v) / 1e6))
        print(f"rep {rep+1}/{reps} {name}: p50 {res[name][-1][0]:.0f} us, {iops} IOPS", file=sys.stderr, flush=True)
print(f"{reps} repetitions, medians [min-max] of the per-run values\n")
print("| variant | p50 µs (mean of 2 vCPUs) | IOPS (both) | exits/req | MMIO exits/req | signals/req | polled wakes/req | poll ms/run |")
print("|---|---|---|---|---|---|---|---|")
for name, _, _ in variants:
    rows = res[name]
    def col(i, fmt):
        xs = [r[i] for r in rows]
        return f"{fmt(statistics.median(xs))} [{fmt(min(xs))}-{fmt(max(xs))}]"
    f0 = lambda x: f"{x:.0f}"; f2 = lambda x: f"{x:.2f}"
    print(f"| {name} | {col(0, f0)} | {col(1, f0)} | {col(2, f2)} | {col(3, f2)} | {col(4, f2)} | {col(5, f2)} | {col(6, f0)} |")

"""Δm of every method minus equal weighting's, seed by seed (the same seed's single-task
baselines cancel), from a `densemtl compare` folder's compare.json.

    python benchmarks/methods_cpu/paired.py CMP_DIR > paired.md
"""

import json
import sys
from pathlib import Path

rows = json.loads((Path(sys.argv[1]) / "compare.json").read_text())["rows"]
runs = {r["extra"]["weighting"]: r["extra"]["delta_m"] for r in rows if r["extra"].get("weighting")}
equal = runs["equal"]
seeds = sorted(equal["primary"]["per_seed"])
table = []
for name, dm in runs.items():
    diff = {v: [dm[v]["per_seed"][s] - equal[v]["per_seed"][s] for s in seeds] for v in ("primary", "all")}
    table.append((sum(diff["primary"]) / len(seeds), name, diff))
print("| method | Δm primary − equal, mean | per seed (" + ", ".join(seeds) + ") | same sign in every seed | "
      "Δm all − equal, per seed |")
print("|---|---:|---|---|---|")
for mean, name, diff in sorted(table, reverse=True):
    p = diff["primary"]
    sign = "ahead" if min(p) > 0 else "behind" if max(p) < 0 else "no"
    print(f"| {name} | {mean:+.2f} | {', '.join(f'{v:+.2f}' for v in p)} | {sign if name != 'equal' else '—'} | "
          f"{', '.join(f'{v:+.2f}' for v in diff['all'])} |")

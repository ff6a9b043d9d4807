"""Print the markdown table of docs/results.md from the JSON that `gati eval --json` recorded.

    python experiments/results_table.py docs/results/r18-97.json docs/results/r18-99.json ...
"""
import json
import sys

# GATI (2021), Table 6, 97% target: latency gains on CPU and on GPU
PAPER_97 = {"cpu": {"resnet18": 1.72, "resnet50": 1.95}, "cuda": {"resnet18": 1.28, "resnet50": 1.63}}


def row(path: str) -> str:
    r = json.load(open(path))
    arch = "resnet50" if "r50" in r["bundle"] else "resnet18"
    device = "cuda" if r["device"].startswith("cuda") else "cpu"
    paper = f"{PAPER_97[device][arch]:.2f}x ({device})" if r["target"] == 0.97 else "-"
    return (f"| {arch} | {r['target']:.2f} | {r['requests']} | {r['agreement']:.4f} | {r.get('nominal_lower_bound', r.get('certified_lower_bound')):.4f} "
            f"| {r['hit_rate']:.1%} | {r['mean_stages_run']:.2f} | {r['mean_ms_base']:.2f} | {r['mean_ms_gati']:.2f} "
            f"| **{r['speedup_mean']:.2f}x** | {r['speedup_p50']:.2f}x | {r['p99_ms_base']:.2f} / {r['p99_ms_gati']:.2f} "
            f"| {r['base_acc']:.4f} / {r['gati_acc']:.4f} | {paper} |")


print("| model | target | requests | agreement | certified >= | hit rate | stages run | base ms | GATI ms "
      "| speedup (mean) | speedup (p50) | p99 ms base / GATI | accuracy base / GATI | paper |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for p in sys.argv[1:]:
    print(row(p))

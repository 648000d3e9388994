#!/usr/bin/env python3
"""The README's table of a miniature reproduction, from its published eval.csv.

For each strategy and healed fraction: the dropped block, the held-out loss unhealed / healed,
and a few reasoning tasks' acc_norm unhealed / healed, the unpruned model's values in the
headers. Only the LoRA rank most healed rows use (the main one), like the report's figures.

    python3 scripts/miniature_table.py results/miniature-gemma3-270m/eval.csv
"""
import collections
import csv
import sys

TASKS = [("arc_easy", "ARC-Easy"), ("hellaswag", "HellaSwag"), ("piqa", "PIQA")]


def main(path):
    rows = list(csv.DictReader(open(path, newline="")))
    ranks = collections.Counter(r["lora_rank"] for r in rows if r["healed"] == "true")
    main_rank = ranks.most_common(1)[0][0] if ranks else ""
    value = {}
    block = {}
    for r in rows:
        if r["healed"] == "true" and r["lora_rank"] != main_rank:
            continue
        key = (r["variant"] == "base" and "base") or (r["strategy"], r["fraction"], r["healed"])
        value[(key, r["task"], r["metric"])] = float(r["value"])
        if r["variant"] != "base":
            block[(r["strategy"], r["fraction"])] = (r["start"], r["end"])

    def get(key, task, metric):
        v = value.get((key, task, metric))
        return "-" if v is None else (f"{v:.2f}" if task == "loss" else f"{v:.3f}")

    header = ["strategy, fraction", "drops",
              f"loss, unhealed / healed (unpruned {get('base', 'loss', 'loss')})"]
    header += [f"{name} acc_norm ({get('base', t, 'acc_norm')})" for t, name in TASKS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    healed = sorted({(k[0], k[1]) for (k, _, _) in value if k != "base" and k[2] == "true"},
                    key=lambda sf: (sf[0] != "similarity", float(sf[1])))
    for strategy, fraction in healed:
        start, end = block[(strategy, fraction)]
        cells = [f"{strategy} {float(fraction):.2f}", f"[{start}, {end})"]
        for task, metric in [("loss", "loss")] + [(t, "acc_norm") for t, _ in TASKS]:
            un = get((strategy, fraction, "false"), task, metric)
            he = get((strategy, fraction, "true"), task, metric)
            cells.append(f"{un} / {he}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: miniature_table.py results/<pipeline>/eval.csv")
    main(sys.argv[1])

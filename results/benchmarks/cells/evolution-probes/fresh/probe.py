"""Probe: (1 + lambda) evolution whose selection draws fresh proxy-split images every generation (EvoPress style).

Not committed code: measures whether fresh slices let evolution leave the uniform policy on resnet56 0.5flops.
"""
import copy
import json
import sys
import time

import numpy as np
import torch

from autoprune.core.budget import Budget
from autoprune.core.moves import move_channels
from autoprune.experiment import build_experiment
from autoprune.search.evolution import EvolutionSearcher

seed, moves, cpu_budget, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
lam = int(sys.argv[5]) if len(sys.argv) > 5 else 8
s1 = int(sys.argv[6]) if len(sys.argv) > 6 else 250
s2 = int(sys.argv[7]) if len(sys.argv) > 7 else 1000
torch.set_num_threads(1)
torch.manual_seed(0)
exp = build_experiment("resnet56-cifar10", {"weights": "resnet56-4bfd9763-jpeg.th", "calibration_images": 512,
                                            "proxy_images": 5000})
ev = exp.evaluator
proxy = ev.proxy
print("pool", len(proxy), flush=True)
searcher = EvolutionSearcher(ev, Budget.parse("0.5flops"), evals=10, seed=seed)
space, cost, limit = searcher.space, searcher.cost, searcher.limit
rng = np.random.default_rng(seed)


def prepared(kept):
    net = ev.build(space.policy_from_kept(kept))
    return proxy.prepare(net)


def hits(model, idx):
    sub = copy.copy(proxy)
    sub.images, sub.targets = proxy.images[idx], proxy.targets[idx]
    return sub.correct(model).float()


t0 = time.process_time()
parent = space.kept(searcher.project({n: 0.0 for n in space.names}, fill=False))
parent_net = prepared(parent)
log = [{"cpu": time.process_time() - t0, "kept": parent, "gen": 0}]
gen, evals = 0, 1
while time.process_time() - t0 < cpu_budget:
    gen += 1
    grng = np.random.default_rng((seed, gen))
    children = [move_channels(parent, space, cost, limit, grng, moves) for _ in range(lam)]
    perm = torch.from_numpy(grng.permutation(len(proxy)))
    idx1, idx2 = perm[:s1], perm[s1:s1 + s2]
    nets = [prepared(k) for k in children]
    evals += lam
    first = [hits(n, idx1).mean().item() for n in nets]
    order = sorted(range(lam), key=lambda i: -first[i])[:2]
    final = {i: hits(nets[i], idx2).mean().item() for i in order}
    parent_acc = hits(parent_net, idx2).mean().item()
    best = max(order, key=lambda i: final[i])
    moved = final[best] > parent_acc
    if moved:
        parent, parent_net = children[best], nets[best]
    log.append({"cpu": time.process_time() - t0, "kept": parent, "gen": gen, "evals": evals, "moved": moved,
                "parent_acc": parent_acc, "best_child": final[best]})
    print(f"gen {gen} cpu {log[-1]['cpu']:.0f} parent {parent_acc:.3f} child {final[best]:.3f} moved {moved} "
          f"params {sum(parent.values())}", flush=True)

# test accuracy of the parent at fixed CPU times
marks = [90, 180, 270, 400, 600, 800]
result = {"seed": seed, "moves": moves, "lam": lam, "s1": s1, "s2": s2, "gens": gen, "evals": evals, "marks": {}}
for m in marks:
    entries = [e for e in log if e["cpu"] <= m]
    if not entries or m > log[-1]["cpu"] + 1:
        continue
    kept = entries[-1]["kept"]
    acc = exp.accuracy(ev.build(space.policy_from_kept(kept)), "report")
    result["marks"][m] = {"test": acc, "gen": entries[-1]["gen"], "stage3": float(np.mean([k for n, k in kept.items() if "layer3" in n]))}
    print("mark", m, result["marks"][m], flush=True)
kept = log[-1]["kept"]
result["final"] = {"test": exp.accuracy(ev.build(space.policy_from_kept(kept)), "report"), "cpu": log[-1]["cpu"],
                   "kept": kept}
print("final", result["final"]["test"], flush=True)
json.dump(result, open(out, "w"), indent=1)

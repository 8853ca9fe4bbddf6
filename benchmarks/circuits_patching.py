"""Batched patching engine vs one-patch-per-forward vs nnsight, interleaved rounds, min time per method.
run: LMSCOPE_THREADS=1 .venv/bin/python benchmarks/circuits_patching.py"""
import json
import time

import torch
from nnsight import LanguageModel

import lmscope as ls
from lmscope import circuits as C
from lmscope.core.sites import Site

torch.set_num_threads(1)

model = ls.load()
task = C.filter_correct(model, C.ioi_task(model, n=16, seed=0)).task.subset(range(8))
clean, corrupt = task.batches(model)
layers = (18, 19, 20)
specs = [C.PatchSpec(Site("attn_z", layer), None, h) for layer in layers for h in range(9)]
nm = LanguageModel(model.hf, tokenizer=model.tokenizer)
with ls.capture(model, [Site("attn_z", layer) for layer in layers]) as acts:
    model(clean)
inp = {"input_ids": corrupt.input_ids, "attention_mask": corrupt.attention_mask, "position_ids": corrupt.position_ids}
dh = model.shape.d_head
def nnsight_sweep():
    vals = []
    for s in specs:
        with torch.no_grad(), nm.trace(inp):
            nm.model.layers[s.site.layer].self_attn.o_proj.input[:, :, s.head * dh:(s.head + 1) * dh] = acts[s.site][:, :, s.head]
            out = nm.lm_head.output.save()
        vals.append(float(task.metric(out).mean()))
    return torch.tensor(vals)
T = {"batched27": [], "single": [], "nnsight": []}
for rnd in range(2):
    for key in T:
        t0 = time.perf_counter()
        if key == "nnsight":
            v = nnsight_sweep()
        else:
            v = C.patch_sweep(model, clean, corrupt, specs, task.metric, copies={"batched27": 27, "single": 1}[key]).values
        T[key].append(time.perf_counter() - t0)
        print(rnd, key, round(T[key][-1], 1), flush=True)
best = {k: min(v) for k, v in T.items()}
res = {"times": T, "best": best, "nnsight_over_batched27": best["nnsight"] / best["batched27"],
       "single_over_batched27": best["single"] / best["batched27"], "nnsight_over_single": best["nnsight"] / best["single"],
       "n_patches": len(specs), "rows_per_patch": 8, "seq": clean.shape[1]}
print(res)
json.dump(res, open("/tmp/lm/out/speed2.json", "w"), indent=1)

"""Run by the torchrun tests: train a small TopK SAE from a store with ``train_sae`` (optionally stopping early)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from lmscope.experiments import distributed
from lmscope.experiments.store import ActivationStore
from lmscope.saes import SAEConfig, StoreSource, TrainConfig, train_sae

store, site, out, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
distributed.init_from_env()
source = StoreSource(ActivationStore(store), site, seed=0)
res = train_sae(source, SAEConfig("topk", source.d_in, 128, k=8), TrainConfig(
    total_tokens=256 * 40, batch_size=256, lr=1e-3, warmup_steps=5, checkpoint_every=10, progress=False),
    out_dir=out, stop_after=stop or None)  # fmt: skip
if distributed.is_main():
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in res.sae.state_dict().items()}, str(out / f"weights-{res.steps}.safetensors"))
    (out / f"resumed-{res.steps}.txt").write_text(str(res.resumed_from))
if dist.is_initialized():  # both ranks past every write before the group goes (a rank tearing gloo down while the
    dist.barrier()         # other still talks has aborted with "terminate called without an active exception")
    dist.destroy_process_group()

"""Train the same TopK SAE with lmscope and with SAELens on the same stored activations; print the time ratio.

    LMSCOPE_THREADS=1 python benchmarks/sae_vs_saelens.py --store runs/store12 --site blocks.12.hook_resid_post \
        --d-sae 2304 --k 32 --tokens 51200

Both see the same batches (lmscope's StoreSource order), batch size, Adam lr, and no LR schedule
besides warm-up. Reported: wall seconds per 1k tokens for each, their ratio, and each SAE's FVU
on one held-back batch of the store.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--d-sae", type=int, default=2304)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--tokens", type=int, default=51200)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=4e-4)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("LMSCOPE_THREADS", "1")))
    from lmscope.experiments.store import ActivationStore
    from lmscope.saes import SAEConfig, StoreSource, TrainConfig, train_sae

    store = ActivationStore(a.store, verify=False)
    src = StoreSource(store, a.site, seed=0)
    steps = a.tokens // a.batch
    batches = [src.batch(i, a.batch) for i in range(steps + 1)]
    held = batches.pop()
    d_in = held.shape[1]

    class Fixed:
        d_in = held.shape[1]

        def batch(self, step: int, batch_size: int) -> torch.Tensor:
            return batches[step % len(batches)]

    def fvu(recon: torch.Tensor) -> float:
        return float((held - recon).pow(2).sum() / (held - held.mean(0)).pow(2).sum())

    # Warm-up: the first Adam construction imports torch's compiler stack (seconds); keep it out of the timing.
    train_sae(Fixed(), SAEConfig("topk", d_in, 64, k=4), TrainConfig(total_tokens=a.batch, batch_size=a.batch, progress=False,
                                                                    init_tokens=a.batch))  # fmt: skip
    t = time.perf_counter()
    ours = train_sae(Fixed(), SAEConfig("topk", d_in, a.d_sae, k=a.k), TrainConfig(
        total_tokens=steps * a.batch, batch_size=a.batch, lr=a.lr, warmup_steps=10, decay_start=1.0, progress=False,
        init_tokens=a.batch))  # fmt: skip
    t_ours = time.perf_counter() - t
    with torch.no_grad():
        f_ours = fvu(ours.sae.decode(ours.sae.encode(held)))

    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    warm = SAETrainerConfig(total_training_samples=a.batch, train_batch_size_samples=a.batch, lr=a.lr, lr_end=a.lr,
                            n_checkpoints=0, logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=1)
    SAETrainer(warm, TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=64, k=4)), iter(batches)).fit()
    sl_sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=a.d_sae, k=a.k))
    cfg = SAETrainerConfig(total_training_samples=steps * a.batch, train_batch_size_samples=a.batch, lr=a.lr,
                           lr_warm_up_steps=10, lr_end=a.lr, n_checkpoints=0, logger=LoggingConfig(log_to_wandb=False),
                           n_batches_for_norm_estimate=1)  # fmt: skip
    t = time.perf_counter()
    trainer = SAETrainer(cfg, sl_sae, iter(batches))
    trained = trainer.fit()
    t_sl = time.perf_counter() - t
    with torch.no_grad():
        f_sl = fvu(trained.decode(trained.encode(held)))
    print(json.dumps({"tokens": steps * a.batch, "d_sae": a.d_sae, "k": a.k, "lmscope_s": t_ours, "saelens_s": t_sl,
                      "lmscope_s_per_1k_tokens": 1000 * t_ours / (steps * a.batch),
                      "saelens_s_per_1k_tokens": 1000 * t_sl / (steps * a.batch),
                      "time_ratio_lmscope_over_saelens": t_ours / t_sl,
                      "fvu_lmscope": f_ours, "fvu_saelens": f_sl}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

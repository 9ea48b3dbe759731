"""Training: one engine (`engine.TrainEngine`, torch or DeepSpeed ZeRO), the one training loop
every trainer runs on (`loop.run_loop`: settings objects, batches split across ranks, resume;
docs/training.md), supervised fine-tuning (`sft.train_sft`, `sft.eval_loss`), reward-model
training (`reward.train_reward`) and tiny-model pretraining (`bootstrap`)."""

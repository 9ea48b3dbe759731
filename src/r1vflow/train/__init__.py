"""Training: one engine (`engine.TrainEngine`, torch or DeepSpeed ZeRO), supervised fine-tuning
(`sft.train_sft`, `sft.eval_loss`) and tiny-model pretraining (`bootstrap`)."""

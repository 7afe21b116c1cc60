"""Recipes that produce the zoo: RoCL/SimCLR pretraining (training.pretrain) and supervised adversarial
baselines (training.supervised). Uses rocl_zoo; rocl_zoo never imports training."""

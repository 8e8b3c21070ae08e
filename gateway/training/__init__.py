"""Training of CADC models: data, losses, discriminator, checkpoints and the training loop."""

"""Reference networks and tasks: small ResNets and a MobileNetV2-style network, their training
recipes, trained checkpoints (shipped or cached), and the tasks that wrap them with MNIST,
Fashion-MNIST or CIFAR-10."""

from automl.reference.checkpoints import (
    checkpoint_path,
    default_cache_dir,
    load_reference,
    reference_task,
    train_reference,
)

__all__ = ["checkpoint_path", "default_cache_dir", "load_reference", "reference_task", "train_reference"]

"""Evaluation: compute cost, Fréchet distances, and an offline Fashion-MNIST feature extractor."""

from spectral_diffusion.evaluation.classifier_training import accuracy, load_fashion_mnist_images, train_classifier
from spectral_diffusion.evaluation.cost import attention_product_ops, count_gmacs, count_params, gmacs_by_op
from spectral_diffusion.evaluation.fmnist_classifier import DEFAULT_WEIGHTS, FMNISTClassifier, FMNISTFeatureExtractor
from spectral_diffusion.evaluation.frechet import FeatureStatistics, frechet_distance

__all__ = [
    "DEFAULT_WEIGHTS",
    "FMNISTClassifier",
    "FMNISTFeatureExtractor",
    "FeatureStatistics",
    "accuracy",
    "attention_product_ops",
    "count_gmacs",
    "count_params",
    "frechet_distance",
    "gmacs_by_op",
    "load_fashion_mnist_images",
    "train_classifier",
]

"""Evaluation: cost, Fréchet distances / KID with cached reference statistics, seeded generation,
throughput, the spectral report, and feature extractors (Inception, the offline Fashion-MNIST one).

``evaluate.py`` wires these together; ``docs/evaluation.md`` describes the metrics and the protocol.
"""

from spectral_diffusion.evaluation.classifier_training import (
    ClassifierRecipe,
    accuracy,
    load_fashion_mnist_images,
    train_and_save,
    train_classifier,
)
from spectral_diffusion.evaluation.cost import (
    attention_product_ops,
    count_gmacs,
    count_params,
    decoder_gmacs,
    gmacs_by_op,
    network_calls_per_sample,
)
from spectral_diffusion.evaluation.extractors import build_feature_extractor
from spectral_diffusion.evaluation.fmnist_classifier import DEFAULT_WEIGHTS, FMNISTClassifier, FMNISTFeatureExtractor
from spectral_diffusion.evaluation.fmnist_weights import default_weights, resolve_weights
from spectral_diffusion.evaluation.frechet import FeatureStatistics, frechet_distance
from spectral_diffusion.evaluation.kid import kernel_inception_distance

__all__ = [
    "ClassifierRecipe",
    "DEFAULT_WEIGHTS",
    "FMNISTClassifier",
    "FMNISTFeatureExtractor",
    "FeatureStatistics",
    "accuracy",
    "attention_product_ops",
    "build_feature_extractor",
    "count_gmacs",
    "count_params",
    "decoder_gmacs",
    "default_weights",
    "frechet_distance",
    "gmacs_by_op",
    "kernel_inception_distance",
    "load_fashion_mnist_images",
    "network_calls_per_sample",
    "resolve_weights",
    "train_and_save",
    "train_classifier",
]

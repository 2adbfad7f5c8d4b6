"""Few-shot enrollment of new defect types and the open-set (known / unknown) decision.

torch is imported inside the functions that need it: `lowbit.fewshot.predict` (and the rest of
this package's import) runs where only numpy, onnx and Pillow are installed.
"""

from lowbit.fewshot.enroll import enroll_class, remove_class
from lowbit.fewshot.episodes import METHODS, episode_accuracies, evaluate_fewshot
from lowbit.fewshot.features import model_features, prototype, runtime_features
from lowbit.fewshot.images import load_images, save_images
from lowbit.fewshot.openset import calibrate_threshold, integer_calibration, is_known, ood_score
from lowbit.fewshot.predict import predict

__all__ = [
    "METHODS",
    "calibrate_threshold",
    "enroll_class",
    "episode_accuracies",
    "evaluate_fewshot",
    "integer_calibration",
    "is_known",
    "load_images",
    "model_features",
    "ood_score",
    "predict",
    "prototype",
    "remove_class",
    "runtime_features",
    "save_images",
]

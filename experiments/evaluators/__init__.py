"""One evaluator per task or metric family, run by ``experiments.evaluate`` in ``EVALUATORS``'
order (the order of eval.json's keys).

Each evaluator (``base.Evaluator``) says whether it applies from what the run and its data
provide (a trained task, held-out captions or questions, a classifier of the dataset's classes
in ``base.CLASS_READERS``, a reference set), checks its inputs before any evaluator samples,
then samples and scores. New ones (e.g. video: temporal consistency, FVD against a reference)
are a class here and a row of ``EVALUATORS``; what one evaluator makes for the next (the
class2img samples) is passed in ``Context.products``.
"""
from experiments.evaluators.base import (CLASS_READERS, ClassReader, Context,  # noqa: F401
                                         EvaluateUsageError, Evaluator, K, Options)
from experiments.evaluators.class_conditional import ClassAccuracy, ClassSamples
from experiments.evaluators.image_quality import ImageQuality
from experiments.evaluators.multimodal import JointConsistency, TextToImageAccuracy
from experiments.evaluators.text import VQA, Captions, TextLikelihood

EVALUATORS = (ClassSamples(), ClassAccuracy(), TextToImageAccuracy(), JointConsistency(),
              ImageQuality(), Captions(), VQA(), TextLikelihood())

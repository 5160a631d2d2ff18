"""One evaluator per task or metric family, run by ``experiments.evaluate`` in ``EVALUATORS``'
order (the order of eval.json's keys).

Each evaluator (``base.Evaluator``) says whether it applies from what the run and its data
provide (a trained task, held-out captions or questions, a classifier of the dataset's classes
in ``base.CLASS_READERS``, a reference set), checks its inputs before any evaluator samples,
then samples and scores. A clip model's run (``model.frames`` > 1) is read by its data's clip
reader (``base.CLIP_READERS``) instead of a class reader, with the evaluators of ``video``; new
ones (e.g. FVD against a reference) are a class here and a row of ``EVALUATORS``; what one
evaluator makes for the next (the class2img samples or clips) is passed in
``Context.products``.
"""
from experiments.evaluators.base import (CLASS_READERS, CLIP_READERS, EVAL_TASKS,  # noqa: F401
                                         ClassReader, ClipReader, ClipReading, Context,
                                         EvaluateUsageError, Evaluator, K, Options)
from experiments.evaluators.class_conditional import ClassAccuracy, ClassSamples
from experiments.evaluators.image_quality import ImageQuality
from experiments.evaluators.multimodal import JointConsistency, TextToImageAccuracy
from experiments.evaluators.text import VQA, Captions, TextLikelihood
from experiments.evaluators.video import (ClassToVideoAccuracy, FramePrediction,
                                          TextToVideoAccuracy, VideoJointConsistency)

EVALUATORS = (ClassSamples(), ClassAccuracy(), ClassToVideoAccuracy(), TextToImageAccuracy(),
              TextToVideoAccuracy(), JointConsistency(), VideoJointConsistency(),
              ImageQuality(), Captions(), VQA(), TextLikelihood(), FramePrediction())

"""Evaluation metrics.

Images (ADM / DiT protocol): ``image_metrics`` (FID, Inception Score, precision/recall) over
features from a ``feature_extractor.FeatureExtractor``: ``inception`` (pytorch-fid InceptionV3
from a local weights file) or ``digits_classifier`` (the default dataset's own classifier);
``reference_batch`` reads ADM reference ``.npz`` files. Text: ``text_metrics`` (BLEU-4,
CIDEr-D), ``vqa`` (VQAv2 accuracy), ``perplexity`` (SEDD evidence bound).
"""
from mdm_jax.evaluation.digits_classifier import DigitsFeatureExtractor
from mdm_jax.evaluation.digits_classifier import load_digits_classifier
from mdm_jax.evaluation.digits_classifier import save_digits_classifier
from mdm_jax.evaluation.digits_classifier import train_digits_classifier
from mdm_jax.evaluation.feature_extractor import extract_features
from mdm_jax.evaluation.feature_extractor import FeatureExtractor
from mdm_jax.evaluation.image_metrics import frechet_distance
from mdm_jax.evaluation.image_metrics import frechet_distance_from_features
from mdm_jax.evaluation.image_metrics import frechet_distance_to_features
from mdm_jax.evaluation.image_metrics import gaussian_statistics
from mdm_jax.evaluation.image_metrics import inception_score
from mdm_jax.evaluation.image_metrics import precision_recall
from mdm_jax.evaluation.inception import InceptionFeatureExtractor
from mdm_jax.evaluation.perplexity import perplexity_from_elbo
from mdm_jax.evaluation.perplexity import sedd_nll_bound
from mdm_jax.evaluation.reference_batch import load_reference_batch
from mdm_jax.evaluation.text_metrics import cider_d
from mdm_jax.evaluation.text_metrics import corpus_bleu
from mdm_jax.evaluation.vqa import mean_vqa_accuracy
from mdm_jax.evaluation.vqa import vqa_accuracy

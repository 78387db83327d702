"""Scoring models: BLIP-2 zero-shot matching, the trained classifiers (scikit-learn estimators),
self-training, calibration, the embedding cache and :class:`.predictor.Predictor`, which serves them."""

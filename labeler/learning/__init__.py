"""The learning loop: the labelled set, training and promotion, the model registry, uncertainty
and query strategies, metrics, label review, and the offline simulation, replay and dataset map."""

"""labeler: BLIP-2 pre-annotation, uncertainty ranking and retraining for Label Studio."""

__version__ = "0.2.0"

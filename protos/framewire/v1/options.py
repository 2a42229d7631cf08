"""What unset prediction options mean: the one table of request defaults.

The server fills them in (`service.requests.predict_params`) for both APIs;
the client and its command line offer the same values as their defaults,
and inference.proto's comments on `PredictOptions` name them. Standard
library only, so both sides can import it (see this package's docstring).
"""

#: Classes returned per image for classification when top_k is 0 or unset.
DEFAULT_TOP_K = 5
#: Detections scoring below this are dropped when score_threshold is unset.
DEFAULT_SCORE_THRESHOLD = 0.5
#: Detections kept per image when max_detections is 0 or unset.
DEFAULT_MAX_DETECTIONS = 100
#: The largest top_k a request may ask for.
MAX_TOP_K = 1000

"""Scale-out on engines users already operate (the [ray] extra): Ray Data for files, Ray Serve for HTTP.
Both run packages through the same runtime (TextClassifier) as the server and `rnnserve-score`."""

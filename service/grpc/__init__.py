"""The V2 inference protocol over gRPC (`inference.GRPCInferenceService`), beside HTTP in every worker."""

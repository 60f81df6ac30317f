"""The V2 inference protocol without a transport: typed requests and answers (types.py), each task's tensors
(codecs.py), their wire-independent checks (tensors.py) and every operation (dataplane.py). http/v2.py and
grpc/ translate JSON, binary tensors and protobuf to and from these types, and nothing else."""

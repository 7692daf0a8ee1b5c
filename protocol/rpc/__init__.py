"""Generated gRPC stubs of package llamdex.v1 (do not edit; run scripts/gen_proto.py)."""

"""The request path: the plan, the cascade loop, the in-process engine and its CUDA-graph form."""

"""The inference service: pixels in, cut-outs out, model calls batched across requests into Triton."""

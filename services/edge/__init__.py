"""The HTTP edge: remove.bg's REST API and Cutout's own over HTTP/JSON, translated to the gateway's gRPC."""

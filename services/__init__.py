"""The Cutout services.

TLS 1.3 only, in every service process. grpcio does not let a server set a minimum TLS
version (grpc/grpc#37305), but grpc core reads its TLS 1.2 cipher list from this
variable when it starts (so before `grpc` is imported: a service's `python -m
services.<name>` imports this package first). Listing only a pre-shared-key suite, which
no gRPC server ever enables, leaves TLS 1.2 with no usable cipher: a TLS 1.2 handshake
fails, TLS 1.3 (whose suites this list does not govern) is unaffected. The record:
docs/decisions/tls13-only.md.
"""

import os

TLS12_UNUSABLE_CIPHERS = "ECDHE-PSK-CHACHA20-POLY1305"
os.environ["GRPC_SSL_CIPHER_SUITES"] = TLS12_UNUSABLE_CIPHERS

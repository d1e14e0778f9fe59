"""`python -m services.edge`: the HTTP edge on hypercorn (HTTP/1.1 and, over TLS, HTTP/2 by ALPN)."""

from services.edge.server import main

if __name__ == "__main__":
    main()

"""The retention service: results kept on request, encrypted at rest, expiring, owner-bound, erasable."""

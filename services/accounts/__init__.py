"""Accounts, API keys and the credit ledger: the internal service cutout.v1.Accounts."""

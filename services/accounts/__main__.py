"""python -m services.accounts            serve (applies pending migrations first)
python -m services.accounts migrate    only apply the migrations, then exit
"""

import sys

from services.accounts.server import build, open_database
from services.accounts.settings import AccountsSettings
from services.common.server import configure_logging, run_service

if __name__ == "__main__":
    settings = AccountsSettings()
    if sys.argv[1:] == ["migrate"]:
        configure_logging(settings)
        open_database(settings).dispose()
    elif sys.argv[1:]:
        sys.exit(__doc__)
    else:
        run_service("accounts", build, settings)

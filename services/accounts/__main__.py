"""python -m services.accounts            serve (applies pending migrations first, unless
                                        CUTOUT_ACCOUNTS_MIGRATE_ON_START=false)
python -m services.accounts migrate    only apply the migrations, then exit
"""

import sys

from services.accounts.db import make_engine, migrate
from services.accounts.server import build
from services.accounts.settings import AccountsSettings
from services.common.server import configure_logging, run_service

if __name__ == "__main__":
    settings = AccountsSettings()
    if sys.argv[1:] == ["migrate"]:
        configure_logging(settings)
        engine = make_engine(settings.database_url, busy_timeout_s=settings.sqlite_busy_timeout_s)
        migrate(engine)
        engine.dispose()
    elif sys.argv[1:]:
        sys.exit(__doc__)
    else:
        run_service("accounts", build, settings)

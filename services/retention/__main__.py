"""python -m services.retention            serve (applies pending migrations first, unless
                                         CUTOUT_RETENTION_MIGRATE_ON_START=false)
python -m services.retention migrate    only apply the migrations, then exit
"""

import sys

from services.common.server import configure_logging, run_service
from services.common.sql import make_engine, migrate
from services.retention.server import MIGRATIONS, VERSION_TABLE, build
from services.retention.settings import RetentionSettings

if __name__ == "__main__":
    settings = RetentionSettings()
    if sys.argv[1:] == ["migrate"]:
        configure_logging(settings)
        engine = make_engine(settings.database_url)
        migrate(engine, MIGRATIONS, version_table=VERSION_TABLE)
        engine.dispose()
    elif sys.argv[1:]:
        sys.exit(__doc__)
    else:
        run_service("retention", build, settings)

"""python -m purchase_common.app_user: create (or update) the functions' own MongoDB user.

The functions never log in as the database's root user. This runs once per deploy (the
`mongodb-app-user` Job in k8s/) with the root login and gives the application user
readWrite on the purchases database only: read, insert and create the indexes the functions
need, nothing on any other database and no user or role administration. Running it again
resets the password and roles to what the Secret says, so rotating the password is a redeploy.

Environment (all from Secrets, none logged):
  MONGODB_ADMIN_URI      the root login (mongodb-credentials)
  MONGODB_APP_USERNAME   the application user (mongodb-app-credentials)
  MONGODB_APP_PASSWORD
  MONGODB_DATABASE       the purchases database (default: the shared setting)
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from collections.abc import Mapping
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from . import config
from .logs import redact

USER_NOT_FOUND = 11  # MongoDB's UserNotFound
# FerretDB 1.x (the node's stand-in) implements users but no roles; it refuses them with this.
NOT_IMPLEMENTED = 238


def app_roles(database: str) -> list[dict[str, str]]:
    return [{"role": "readWrite", "db": database}]


def ensure_app_user(admin: MongoClient[dict[str, Any]], database: str, username: str, password: str) -> str:
    """Create the user in `database` (its authSource) or reset its password and roles; says
    what it did, and says so plainly when the server cannot restrict the user by roles."""
    try:
        outcome = _create_or_update(admin[database], username, password, app_roles(database))
        return f"{outcome}, readWrite on {database!r} only"
    except OperationFailure as exc:
        if exc.code != NOT_IMPLEMENTED or "roles" not in str(exc):
            raise
    outcome = _create_or_update(admin[database], username, password, [])
    return f"{outcome} WITHOUT roles: this server does not implement them, so nothing restricts the user"


def _create_or_update(db: Database[dict[str, Any]], username: str, password: str, roles: list[dict[str, str]]) -> str:
    try:
        db.command("updateUser", username, pwd=password, roles=roles)
        return "updated"
    except OperationFailure as exc:
        if exc.code != USER_NOT_FOUND:
            raise
    db.command("createUser", username, pwd=password, roles=roles)
    return "created"


def main(environ: Mapping[str, str] = os.environ) -> int:
    missing = [
        name for name in ("MONGODB_ADMIN_URI", "MONGODB_APP_USERNAME", "MONGODB_APP_PASSWORD") if not environ.get(name)
    ]
    if missing:
        print(f"app_user: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    database = environ.get("MONGODB_DATABASE") or config.DATABASE_NAME
    username, password = environ["MONGODB_APP_USERNAME"], environ["MONGODB_APP_PASSWORD"]
    admin: MongoClient[dict[str, Any]] = MongoClient(environ["MONGODB_ADMIN_URI"], serverSelectionTimeoutMS=30000)
    try:
        outcome = ensure_app_user(admin, database, username, password)
    except PyMongoError as exc:
        admin_password = urllib.parse.unquote(urllib.parse.urlsplit(environ["MONGODB_ADMIN_URI"]).password or "")
        secrets = tuple(s for s in (password, admin_password) if s)
        print(f"app_user: {redact(str(exc), secrets)}", file=sys.stderr)
        return 1
    finally:
        admin.close()
    print(f"app_user: user {username!r} of database {database!r} {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

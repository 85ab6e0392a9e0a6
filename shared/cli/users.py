"""`scanctl users`: create (token shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.exc import IntegrityError

from shared.cli.common import console, db_session, fail, run_async
from shared.db import queries
from shared.tokens import hash_token, new_token

app = typer.Typer(help="Manage API users and their tokens.", no_args_is_help=True)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A unique user name.")],
    admin: Annotated[bool, typer.Option("--admin", help="Allow the admin endpoints.")] = False,
) -> None:
    """Create a user and print its API token (shown once; only its hash is stored)."""
    if not name.strip() or len(name) > 100:
        fail("NAME must have 1 to 100 characters")
    token = new_token()

    async def create_user() -> bool:
        try:
            async with db_session() as session, session.begin():
                await queries.insert_user(session, name, hash_token(token), admin)
        except IntegrityError:
            return False
        return True

    if not run_async(create_user):
        fail(f"a user named {name!r} already exists")
    console.print(token, highlight=False, soft_wrap=True)


@app.command("list")
def list_users() -> None:
    """List users (never their tokens)."""

    async def load() -> list[tuple[str, bool, str, str]]:
        async with db_session() as session:
            return [
                (
                    u.name,
                    u.is_admin,
                    u.created_at.isoformat(),
                    u.revoked_at.isoformat() if u.revoked_at else "",
                )
                for u in await queries.list_users(session)
            ]

    table = Table("name", "admin", "created", "revoked")
    for name, is_admin, created, revoked in run_async(load):
        table.add_row(name, "yes" if is_admin else "", created, revoked)
    console.print(table)


@app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The user to revoke.")]) -> None:
    """Revoke a user's token at once; their tasks are kept."""

    async def do_revoke() -> bool:
        async with db_session() as session, session.begin():
            return await queries.revoke_user(session, name)

    if not run_async(do_revoke):
        fail(f"no active user named {name!r}")
    console.print(f"revoked {name}")

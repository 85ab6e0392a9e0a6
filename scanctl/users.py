"""`scanctl users`: create and rotate-token (the token shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import IntegrityError

from scanctl.common import JsonOption, console, db_session, fail, print_json, run_async
from scanctl.output import iso
from shared.db import users
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
                await users.insert_user(session, name, hash_token(token), admin)
        except IntegrityError:
            return False
        return True

    if not run_async(create_user):
        fail(f"a user named {name!r} already exists")
    console.print(token, highlight=False, soft_wrap=True)


@app.command("list")
def list_users(json_output: JsonOption = False) -> None:
    """List users (never their tokens)."""

    async def load() -> list[dict[str, Any]]:
        async with db_session() as session:
            return [
                {
                    "name": u.name,
                    "is_admin": u.is_admin,
                    "created_at": iso(u.created_at),
                    "revoked_at": iso(u.revoked_at),
                }
                for u in await users.list_users(session)
            ]

    rows = run_async(load)
    if json_output:
        print_json(rows)
        return
    table = Table("name", "admin", "created", "revoked")
    for user in rows:
        table.add_row(
            escape(user["name"]),
            "yes" if user["is_admin"] else "",
            user["created_at"],
            user["revoked_at"] or "",
        )
    console.print(table)


@app.command("rotate-token")
def rotate_token(
    name: Annotated[str, typer.Argument(help="The user whose token to replace.")],
) -> None:
    """Give a user a new API token (printed once); the old one stops working at once."""
    token = new_token()

    async def rotate() -> bool:
        async with db_session() as session, session.begin():
            return await users.rotate_token(session, name, hash_token(token))

    if not run_async(rotate):
        fail(f"no active user named {name!r}")
    console.print(token, highlight=False, soft_wrap=True)


@app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The user to revoke.")]) -> None:
    """Revoke a user's token at once; their tasks are kept."""

    async def do_revoke() -> bool:
        async with db_session() as session, session.begin():
            return await users.revoke_user(session, name)

    if not run_async(do_revoke):
        fail(f"no active user named {name!r}")
    console.print(f"revoked {name}")

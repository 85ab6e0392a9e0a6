"""/api/v1/callbacks/secret: the key completion callbacks are signed with."""

from __future__ import annotations

from fastapi import APIRouter, status

from api_service import responses
from api_service.deps import CurrentUser, SessionDep
from api_service.schemas import SecretOut, SecretRotate
from shared import signing
from shared.db import callbacks
from shared.db.engine import single_statement
from shared.logging import get_logger

log = get_logger(__name__)
router = APIRouter(prefix="/api/v1/callbacks", tags=["callbacks"])


@router.post(
    "/secret",
    status_code=status.HTTP_201_CREATED,
    response_model=SecretOut,
    responses=responses.errors(401, 413, 422, 503),
)
async def rotate_secret(
    user: CurrentUser, session: SessionDep, body: SecretRotate | None = None
) -> SecretOut:
    """A new signing secret, shown once. The one it replaces keeps signing too (every
    callback carries one signature per secret) unless `retire_previous` is true."""
    secret = signing.new_secret()
    retire = body is not None and body.retire_previous
    async with single_statement(session):
        await callbacks.rotate_secret(session, user.id, secret, keep_previous=not retire)
    log.info("callback_secret_rotated", user_id=user.id, previous_retired=retire)
    return SecretOut(
        secret=secret, previous_still_signs=not retire and user.callback_secret is not None
    )

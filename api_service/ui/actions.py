"""A dashboard form's POST: the admin who sent it (same site, CSRF token checked), and the
redirect with a notice that answers it, back to the page the form named."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Form, Request
from starlette.responses import Response

from api_service.ui.auth import Admin, UiActor
from api_service.ui.rendering import redirect, safe_next


@dataclass(frozen=True)
class FormAction:
    request: Request
    admin: Admin
    back: str  # the form's `back` field as sent: checked by `safe_next` before use

    def answer(self, default: str, notice: str, *, error: bool = False) -> Response:
        """303 to the form's `back` (`default` without one) carrying `notice`."""
        target = safe_next(self.back or default)
        return redirect(self.request, target, notice=notice, error=error)


async def form_action(
    request: Request, admin: UiActor, back: Annotated[str, Form(alias="back")] = ""
) -> FormAction:
    return FormAction(request, admin, back)


UiAction = Annotated[FormAction, Depends(form_action)]

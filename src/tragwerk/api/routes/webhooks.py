"""/v1/webhook-subscriptions and /v1/notifications."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from tragwerk.api import schemas
from tragwerk.api.auth import Svc, require
from tragwerk.api.openapi import problems
from tragwerk.api.responses import JSON
from tragwerk.api.routes.paging import Cursor, Limit, PathId, page, page_size
from tragwerk.domain.directory import Permission, Principal
from tragwerk.domain.errors import NotFound

router = APIRouter(prefix="/v1", tags=["webhooks and notifications"])

Reader = Annotated[Principal, Depends(require(Permission.WEBHOOKS_READ))]
Writer = Annotated[Principal, Depends(require(Permission.WEBHOOKS_WRITE))]
Notified = Annotated[Principal, Depends(require(Permission.NOTIFICATIONS_READ))]


@router.get("/webhook-subscriptions", response_model=list[schemas.Webhook])
async def list_webhooks(svc: Svc, _who: Reader) -> Response:
    return JSON(await svc.webhooks.list())


@router.get("/webhook-subscriptions/{subscription_id}", response_model=schemas.Webhook)
async def get_webhook(subscription_id: PathId, svc: Svc, _who: Reader) -> Response:
    return JSON(await svc.webhooks.get(subscription_id))


@router.post("/webhook-subscriptions", status_code=201, response_model=schemas.Webhook)
async def create_webhook(body: schemas.WebhookCreate, svc: Svc, _who: Writer) -> Response:
    fields = body.model_dump()
    fields["url"] = str(body.url)
    return JSON(await svc.webhooks.create(fields), status_code=201)


@router.patch("/webhook-subscriptions/{subscription_id}", response_model=schemas.Webhook)
async def update_webhook(
    subscription_id: PathId, body: schemas.WebhookUpdate, svc: Svc, _who: Writer
) -> Response:
    fields = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    if "url" in fields:
        fields["url"] = str(body.url)
    return JSON(await svc.webhooks.update(subscription_id, fields))


@router.delete("/webhook-subscriptions/{subscription_id}", status_code=204)
async def delete_webhook(subscription_id: PathId, svc: Svc, _who: Writer) -> Response:
    await svc.webhooks.delete(subscription_id)
    return Response(status_code=204)


@router.get(
    "/webhook-subscriptions/{subscription_id}/deliveries",
    response_model=list[schemas.Delivery],
    summary="The subscription's deliveries, newest first, each with its attempts",
    responses=problems(404, s404="No such subscription"),
)
async def list_deliveries(
    subscription_id: PathId,
    svc: Svc,
    _who: Reader,
    before: Annotated[
        int | None, Query(ge=1, description="deliveries with a smaller id (the next page)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    await svc.webhooks.get(subscription_id)  # 404 for an unknown subscription
    return JSON(await svc.deliveries.listing(subscription_id, before or 2**63 - 1, limit))


@router.post(
    "/webhook-subscriptions/{subscription_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=schemas.Redelivery,
    summary="Send a delivery again, with the same event id (receivers deduplicate by it)",
    responses=problems(
        404, 409, s404="No such delivery", s409="It is already queued for redelivery"
    ),
)
async def redeliver(
    subscription_id: PathId, delivery_id: PathId, svc: Svc, _who: Writer
) -> Response:
    await svc.webhooks.get(subscription_id)
    return JSON(await svc.deliveries.redeliver(subscription_id, delivery_id), status_code=202)


@router.get(
    "/notifications",
    response_model=schemas.NotificationPage,
    summary="Your notifications",
    responses=problems(404, s404="Service clients have no notifications"),
)
async def list_notifications(
    svc: Svc, who: Notified, unread: bool = False, cursor: Cursor = None, limit: Limit = None
) -> Response:
    if who.user_id is None:
        raise NotFound("service clients have no notifications")
    result = await svc.notifications.for_user(
        who.user_id, unread_only=unread, after=cursor, limit=page_size(svc, limit)
    )
    return JSON(page(result.items, result.next_cursor))


@router.post("/notifications/{notification_id}/read", response_model=schemas.Notification)
async def mark_read(notification_id: PathId, svc: Svc, who: Notified) -> Response:
    if who.user_id is None:
        raise NotFound("service clients have no notifications")
    return JSON(await svc.notifications.mark_read(who.user_id, notification_id))

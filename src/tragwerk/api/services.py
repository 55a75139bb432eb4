"""What the routes need, built once by the composition root (tragwerk.bootstrap)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.monitoring.metrics import Metrics
from tragwerk.settings import Settings
from tragwerk.store.queries.cases import CaseStore
from tragwerk.store.queries.directory import DirectoryStore
from tragwerk.store.queries.notifications import NotificationStore
from tragwerk.store.queries.webhooks import WebhookStore


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    metrics: Metrics
    cases: CaseStore
    directory: DirectoryStore
    webhooks: WebhookStore
    notifications: NotificationStore

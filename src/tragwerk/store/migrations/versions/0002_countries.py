"""Load ISO 3166 countries from pycountry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import pycountry
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    countries = sa.table(
        "countries",
        sa.column("code", sa.String),
        sa.column("alpha3", sa.String),
        sa.column("name", sa.Text),
    )
    rows = [
        {"code": c.alpha_2, "alpha3": c.alpha_3, "name": c.name}
        for c in sorted(pycountry.countries, key=lambda c: c.alpha_2)
    ]
    op.bulk_insert(countries, rows)


def downgrade() -> None:
    op.execute("DELETE FROM countries")

"""Two processes creating the same agency at once: the loser takes the winner's row (no IntegrityError)."""
from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from agency.db import repos
from agency.db.session import Database
from agency.db.tables import AgencyRow


async def test_two_creators_of_one_agency_both_get_the_same_row(tmp_path) -> None:  # noqa: ANN001
    url = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    first, second = Database(url), Database(url)
    await first.upgrade()
    both_looked = asyncio.Barrier(2)

    async def create(db: Database) -> int:
        async with db.session() as s:
            original = s.execute

            async def execute(stmt, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
                result = await original(stmt, *a, **k)
                if getattr(stmt, "is_select", False) and not both_looked.n_waiting >= 2 and not getattr(s, "_looked", False):
                    s._looked = True  # type: ignore[attr-defined]  # both SELECTs see no agency before either inserts
                    await both_looked.wait()
                return result

            s.execute = execute  # type: ignore[method-assign]
            row = await repos.get_or_create_agency(s, "guild-1", "Guild")
            await s.commit()
            return row.id

    try:
        ids = await asyncio.gather(create(first), create(second))
        assert ids[0] == ids[1]
        async with first.session() as s:
            assert (await s.execute(select(func.count(AgencyRow.id)))).scalar() == 1
    finally:
        await first.dispose()
        await second.dispose()

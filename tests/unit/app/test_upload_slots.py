"""`UploadSlots`: a free slot taken at once by ``try_acquire`` is a slot like any other."""

from __future__ import annotations

import asyncio

from app.runtime import UploadSlots


def test_try_acquire_takes_free_slots_only_and_waiters_get_released_ones() -> None:
    async def main() -> None:
        slots = UploadSlots(2)
        assert slots.try_acquire()
        assert slots.try_acquire()
        assert not slots.try_acquire()  # none free: nothing taken
        assert slots.locked()
        waiter = asyncio.ensure_future(slots.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        slots.release()  # the waiter gets it, not a later try_acquire
        assert not slots.try_acquire()
        await asyncio.wait_for(waiter, 1)
        slots.release()
        slots.release()
        assert slots.try_acquire() and slots.try_acquire() and not slots.try_acquire()

    asyncio.run(main())

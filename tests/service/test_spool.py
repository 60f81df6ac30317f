"""BodySpool keeps order across memory and disk and never blocks its writer."""

import asyncio

from rnnserve.service.scoring.spool import BodySpool


def test_order_is_kept_across_memory_and_file():
    async def main():
        spool = BodySpool(memory_bytes=10)
        chunks = [bytes([i]) * (i % 7 + 1) for i in range(200)]
        out = []
        for i, c in enumerate(chunks):
            spool.put(c)  # never awaits: the writer is never held up
            if i % 3 == 0:
                out.append(await spool.get())
        spool.close()
        while (c := await spool.get()) is not None:
            out.append(c)
        return chunks, out

    chunks, out = asyncio.run(main())
    assert out == chunks


def test_reader_waits_for_the_writer():
    async def main():
        spool = BodySpool()
        reader = asyncio.ensure_future(spool.get())
        await asyncio.sleep(0.01)
        assert not reader.done()
        spool.put(b"x")
        assert await reader == b"x"
        spool.close()
        assert await spool.get() is None

    asyncio.run(main())

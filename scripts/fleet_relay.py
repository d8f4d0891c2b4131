"""A TCP relay that puts a host "far away" (scripts/fleet.sh): every chunk sent towards the
target waits --delay-ms first, replies pass straight back (as examples/relay.rs, without a
build)."""

import argparse
import asyncio


async def pipe(reader, writer, delay):
    try:
        while data := await reader.read(65536):
            if delay:
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--delay-ms", type=float, default=0)
    args = ap.parse_args()
    (lhost, lport), (thost, tport) = (a.rsplit(":", 1) for a in (args.listen, args.to))

    async def serve(client_r, client_w):
        try:
            target_r, target_w = await asyncio.open_connection(thost, int(tport))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            pipe(client_r, target_w, args.delay_ms / 1000),
            pipe(target_r, client_w, 0),
        )

    server = await asyncio.start_server(serve, lhost, int(lport))
    async with server:
        await server.serve_forever()


asyncio.run(main())

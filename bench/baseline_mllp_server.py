"""The anchor of bench/mllp.py: a bare asyncio MLLP server that only parses and ACKs.

It parses each message with python-hl7 and answers ``create_ack('AA')``: no
store, no transform. Whatever the hub does on top costs relative to this.
Usage: python bench/baseline_mllp_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import hl7

START, END = b"\x0b", b"\x1c\x0d"


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Parse and ACK every frame of one connection."""
    try:
        while True:
            await reader.readuntil(START)
            frame = await reader.readuntil(END)
            message = hl7.parse(frame[:-2].decode("utf-8"))
            ack = str(message.create_ack("AA"))
            writer.write(START + ack.encode("utf-8") + END)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    """Serve until killed."""
    server = await asyncio.start_server(serve_connection, "127.0.0.1", port, limit=2**22)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

"""An independent E2EE client for the archive test: matrix-nio (Debian's
python3-matrix-nio, with libolm through python3-olm).

It joins a room it was invited to, waits until the room is encrypted and
everyone in MEMBERS (comma-separated, the compliance bot among them) has
joined, sends BODY encrypted (its room key shared with every member's
devices, as Element does), prints {"step": "sent", "event_id": ...} and
exits 0; 1 on a timeout or error.

usage: nio_send.py HOMESERVER USER_ID PASSWORD ROOM_ID STORE_DIR MEMBERS BODY
"""
import asyncio
import sys

from nio import RoomSendResponse

from niotest import join_encrypted, login, say


async def main():
    hs, user, password, room_id, store, members, body = sys.argv[1:8]
    client = await login(hs, user, password, store, "nio archive test client")
    if client is None:
        return 1
    if not await join_encrypted(client, room_id, members.split(",")):
        return 1
    resp = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                                  ignore_unverified_devices=True)
    if not isinstance(resp, RoomSendResponse):
        say(error="send failed: %s" % resp)
        return 1
    say(step="sent", event_id=resp.event_id)
    await client.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

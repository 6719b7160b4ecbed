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
import json
import sys

from nio import AsyncClient, AsyncClientConfig, LoginResponse, RoomSendResponse


def say(**kw):
    print(json.dumps(kw), flush=True)


async def main():
    hs, user, password, room_id, store, members, body = sys.argv[1:8]
    members = members.split(",")
    client = AsyncClient(hs, user, store_path=store,
                         config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True))
    resp = await client.login(password, device_name="nio archive test client")
    if not isinstance(resp, LoginResponse):
        say(error="login failed: %s" % resp)
        return 1

    async def sync_until(cond, what, seconds=60):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not cond():
            if loop.time() > deadline:
                say(error="timed out waiting for " + what)
                return False
            await client.sync(timeout=500, full_state=client.next_batch is None)
            if client.should_upload_keys:
                await client.keys_upload()
        return True

    if not await sync_until(lambda: room_id in client.invited_rooms or room_id in client.rooms, "the invite"):
        return 1
    await client.join(room_id)
    if not await sync_until(lambda: room_id in client.rooms and client.rooms[room_id].encrypted, "the room to be encrypted"):
        return 1
    r = client.rooms[room_id]
    if not await sync_until(lambda: all(m in r.users and m not in r.invited_users for m in members), "the members to join"):
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

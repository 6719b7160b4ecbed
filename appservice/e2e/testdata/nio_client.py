"""An independent E2EE client for the end-to-end tests: matrix-nio (Debian's
python3-matrix-nio, with libolm through python3-olm).

It joins a room it was invited to, then, once the room is encrypted and the
other people (OTHER_USERS, comma-separated) have joined:
  1. sends an encrypted message;
  2. waits for an encrypted message from each of the other people, decrypted;
  3. sends a message WITHOUT encryption (as a client with encryption off would);
  4. waits for the compliance bot's notice to it (naming it), decrypted.
Each step is printed as one JSON line on stdout; the Go test drives the other
side from them. Exit 0 when every step is done, 1 on timeout.

usage: nio_client.py HOMESERVER USER_ID PASSWORD ROOM_ID STORE_DIR OTHER_USERS BOT_USER
"""
import asyncio
import json
import sys
import uuid

from nio import (AsyncClient, AsyncClientConfig, LoginResponse, MegolmEvent,
                 RoomMessageNotice, RoomMessageText, RoomSendResponse)
from nio.api import Api


def say(**kw):
    print(json.dumps(kw), flush=True)


async def main():
    hs, user, password, room_id, store, others, bot = sys.argv[1:8]
    others = others.split(",")
    client = AsyncClient(hs, user, store_path=store,
                         config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True))
    resp = await client.login(password, device_name="nio test client")
    if not isinstance(resp, LoginResponse):
        say(error="login failed: %s" % resp)
        return 1
    got = {"others": {}, "notice": None}
    undecryptable = []

    async def on_message(room, event):
        if room.room_id != room_id:
            return
        decrypted = bool(getattr(event, "decrypted", False))
        if event.sender in others and isinstance(event, RoomMessageText) and decrypted and event.sender not in got["others"]:
            got["others"][event.sender] = event.body
            say(step="received", sender=event.sender, body=event.body, decrypted=decrypted)
        if event.sender == bot and isinstance(event, RoomMessageNotice) and user in event.body and got["notice"] is None:
            got["notice"] = event
            say(step="notice", sender=event.sender, body=event.body, decrypted=decrypted)

    async def on_megolm(room, event):
        undecryptable.append(event.event_id)

    client.add_event_callback(on_message, (RoomMessageText, RoomMessageNotice))
    client.add_event_callback(on_megolm, (MegolmEvent,))

    async def sync_until(cond, what, seconds=60):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not cond():
            if loop.time() > deadline:
                say(error="timed out waiting for " + what, undecryptable=undecryptable)
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
    # Everyone in before the first message, so its key is shared with all.
    r = client.rooms[room_id]
    if not await sync_until(lambda: all(o in r.users and o not in r.invited_users for o in others), "the others to join"):
        return 1
    say(step="joined")

    resp = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from nio"},
                                  ignore_unverified_devices=True)
    if not isinstance(resp, RoomSendResponse):
        say(error="encrypted send failed: %s" % resp)
        return 1
    say(step="sent", encrypted=True, event_id=resp.event_id)

    if not await sync_until(lambda: all(o in got["others"] for o in others), "the other people's messages"):
        return 1

    # Bypass nio's encryption: a plaintext event straight to the send API.
    method, path, data = Api.room_send(client.access_token, room_id, "m.room.message",
                                       {"msgtype": "m.text", "body": "plaintext from nio"}, uuid.uuid4())
    resp = await client._send(RoomSendResponse, method, path, data, response_data=(room_id,))
    if not isinstance(resp, RoomSendResponse):
        say(error="plaintext send failed: %s" % resp)
        return 1
    say(step="sent", encrypted=False, event_id=resp.event_id)

    if not await sync_until(lambda: got["notice"] is not None, "the bot's notice"):
        return 1
    await client.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

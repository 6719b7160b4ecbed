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
import sys
import uuid

from nio import MegolmEvent, RoomMessageNotice, RoomMessageText, RoomSendResponse
from nio.api import Api

from niotest import join_encrypted, login, say, sync_until


async def main():
    hs, user, password, room_id, store, others, bot = sys.argv[1:8]
    others = others.split(",")
    client = await login(hs, user, password, store, "nio test client")
    if client is None:
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

    # Everyone in before the first message, so its key is shared with all.
    if not await join_encrypted(client, room_id, others, undecryptable=undecryptable):
        return 1
    say(step="joined")

    resp = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hello from nio"},
                                  ignore_unverified_devices=True)
    if not isinstance(resp, RoomSendResponse):
        say(error="encrypted send failed: %s" % resp)
        return 1
    say(step="sent", encrypted=True, event_id=resp.event_id)

    if not await sync_until(client, lambda: all(o in got["others"] for o in others), "the other people's messages", undecryptable=undecryptable):
        return 1

    # Bypass nio's encryption: a plaintext event straight to the send API.
    method, path, data = Api.room_send(client.access_token, room_id, "m.room.message",
                                       {"msgtype": "m.text", "body": "plaintext from nio"}, uuid.uuid4())
    resp = await client._send(RoomSendResponse, method, path, data, response_data=(room_id,))
    if not isinstance(resp, RoomSendResponse):
        say(error="plaintext send failed: %s" % resp)
        return 1
    say(step="sent", encrypted=False, event_id=resp.event_id)

    if not await sync_until(client, lambda: got["notice"] is not None, "the bot's notice", undecryptable=undecryptable):
        return 1
    await client.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

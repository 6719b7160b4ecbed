"""What the matrix-nio test clients (nio_client.py, nio_send.py) share:
steps printed as JSON lines, logging in, syncing until something holds, and
joining an encrypted room once everyone is in."""
import asyncio
import json

from nio import AsyncClient, AsyncClientConfig, LoginResponse


def say(**kw):
    print(json.dumps(kw), flush=True)


async def login(hs, user, password, store, device_name):
    """An E2EE client logged in as user, or None (the error said)."""
    client = AsyncClient(hs, user, store_path=store,
                         config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True))
    resp = await client.login(password, device_name=device_name)
    if not isinstance(resp, LoginResponse):
        say(error="login failed: %s" % resp)
        return None
    return client


async def sync_until(client, cond, what, seconds=60, **report):
    """Syncs (uploading keys as asked) until cond() holds; False, with the
    error and report said, after seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not cond():
        if loop.time() > deadline:
            say(error="timed out waiting for " + what, **report)
            return False
        await client.sync(timeout=500, full_state=client.next_batch is None)
        if client.should_upload_keys:
            await client.keys_upload()
    return True


async def join_encrypted(client, room_id, members, **report):
    """Joins room_id once invited, then waits until it is encrypted and each
    of members has joined, so that a first message's key is shared with all."""
    if not await sync_until(client, lambda: room_id in client.invited_rooms or room_id in client.rooms, "the invite", **report):
        return False
    await client.join(room_id)
    if not await sync_until(client, lambda: room_id in client.rooms and client.rooms[room_id].encrypted, "the room to be encrypted", **report):
        return False
    r = client.rooms[room_id]
    return await sync_until(client, lambda: all(m in r.users and m not in r.invited_users for m in members), "the members to join", **report)

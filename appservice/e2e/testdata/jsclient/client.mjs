// A third, independent E2EE client for the end-to-end tests: Element's own
// stack, matrix-js-sdk with its Rust crypto (matrix-sdk-crypto-wasm, that is
// matrix-rust-sdk and vodozemac), from npm (package.json beside this file).
//
// It joins a room it was invited to, then, once the room is encrypted and
// the other people have joined:
//   1. sends an encrypted message;
//   2. waits for an encrypted message from each of the other people, decrypted;
//   3. sends a message WITHOUT encryption (as a client with encryption off would);
//   4. waits for the compliance bot's notice to it, decrypted.
// Each step is printed as one JSON line on stdout; the Go test drives the
// other side from them. Exit 0 when every step is done, 1 on a failure.
//
// usage: node client.mjs HOMESERVER USER PASSWORD ROOM_ID BOT_USER OTHER_USER...
// (USER is a localpart.)
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

logger.setLevel("error");
const [hs, user, password, roomId, bot, ...others] = process.argv.slice(2);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const fail = (what) => {
    say({ error: what });
    process.exit(1);
};
setTimeout(() => fail("timed out"), 150_000).unref();

const login = await sdk.createClient({ baseUrl: hs }).loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user },
    password,
    initial_device_display_name: "matrix-js-sdk test client",
});
const client = sdk.createClient({
    baseUrl: hs,
    userId: login.user_id,
    deviceId: login.device_id,
    accessToken: login.access_token,
});
await client.initRustCrypto({ useIndexedDB: false });

const got = new Map(); // sender -> body, from the others
let notice = null;
const waiters = [];
const wake = () => waiters.splice(0).forEach((w) => w());
const until = async (cond) => {
    while (!cond()) await new Promise((r) => waiters.push(r));
};

client.on(sdk.RoomEvent.Timeline, async (ev, room) => {
    if (room?.roomId !== roomId) return;
    await client.decryptEventIfNeeded(ev);
    if (ev.getType() !== "m.room.message") return;
    const content = ev.getContent();
    const line = { sender: ev.getSender(), body: content.body, decrypted: ev.isEncrypted() && !ev.isDecryptionFailure(), event_id: ev.getId() };
    if (others.includes(ev.getSender()) && content.msgtype === "m.text" && line.decrypted && !got.has(ev.getSender())) {
        got.set(ev.getSender(), content.body);
        say({ step: "received", ...line });
    }
    if (ev.getSender() === bot && content.msgtype === "m.notice" && content.body?.includes(login.user_id) && !notice) {
        notice = line;
        say({ step: "notice", ...line });
    }
    wake();
});
// Join only once the server has this device's keys: whoever writes first
// after the join must find the device, or its message is undecryptable here.
const keysUploaded = async () => {
    const resp = await client.http.authedRequest(sdk.Method.Post, "/keys/query", undefined, { device_keys: { [login.user_id]: [] } });
    return Boolean(resp.device_keys?.[login.user_id]?.[login.device_id]);
};
let joining = false;
client.on(sdk.RoomMemberEvent.Membership, (_ev, member) => {
    if (member.roomId === roomId && member.userId === login.user_id && member.membership === "invite" && !joining) {
        joining = true;
        (async () => {
            while (!(await keysUploaded())) await new Promise((r) => setTimeout(r, 100));
            await client.joinRoom(roomId);
        })().catch((e) => fail("join: " + e));
    }
    wake();
});
client.on(sdk.RoomStateEvent.Events, wake);
client.on(sdk.ClientEvent.Sync, wake);
await client.startClient({ initialSyncLimit: 20 });

await until(() => client.getRoom(roomId)?.getMyMembership() === "join" && client.getRoom(roomId).hasEncryptionStateEvent());
say({ step: "joined" });
// Everyone in before the first message, so its key is shared with all.
await until(() => others.every((o) => client.getRoom(roomId).getMember(o)?.membership === "join"));

const sent = await client.sendMessage(roomId, { msgtype: "m.text", body: "hello from matrix-js-sdk" });
say({ step: "sent", encrypted: true, event_id: sent.event_id });

await until(() => others.every((o) => got.has(o)));

// Bypass the SDK's encryption: a plaintext event straight to the send API.
const txn = "plain-" + Date.now();
const plain = await client.http.authedRequest(
    sdk.Method.Put,
    `/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${txn}`,
    undefined,
    { msgtype: "m.text", body: "plaintext from matrix-js-sdk" },
);
say({ step: "sent", encrypted: false, event_id: plain.event_id });

await until(() => notice !== null);
client.stopClient();
process.exit(0);

package policy

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func sk(s string) *string { return &s }

func strict() Effective { return Builtin() }

func with(f func(*Effective)) Effective { e := Builtin(); f(&e); return e }

func TestDecide(t *testing.T) {
	text := Event{ID: "$t", Type: "m.room.message", Sender: "@doc:h", Content: json.RawMessage(`{"msgtype":"m.text","body":"BP 120/80"}`)}
	image := Event{ID: "$i", Type: "m.room.message", Sender: "@doc:h", Content: json.RawMessage(`{"msgtype":"m.image","body":"x.png","url":"mxc://h/abc"}`)}
	video := Event{ID: "$v", Type: "m.room.message", Sender: "@doc:h", Content: json.RawMessage(`{"msgtype":"m.video","body":"v.mp4","url":"mxc://h/vid","info":{"thumbnail_url":"mxc://h/thumb"}}`)}
	httpImage := Event{ID: "$hi", Type: "m.room.message", Sender: "@doc:h", Content: json.RawMessage(`{"msgtype":"m.image","body":"x.png","url":"https://h/x.png"}`)}
	sticker := Event{ID: "$s", Type: "m.sticker", Sender: "@doc:h", Content: json.RawMessage(`{"body":"s","url":"mxc://h/st"}`)}
	encImage := Event{ID: "$ei", Type: "m.room.message", Sender: "@doc:h", Content: json.RawMessage(`{"msgtype":"m.image","body":"x.png","file":{"url":"mxc://h/enc"}}`)}
	encrypted := Event{ID: "$e", Type: "m.room.encrypted", Sender: "@doc:h", Content: json.RawMessage(`{"algorithm":"m.megolm.v1.aes-sha2","ciphertext":"AAA"}`)}
	redacted := Event{ID: "$r", Type: "m.room.message", Sender: "@doc:h", Content: json.RawMessage(`{}`)}
	botNotice := Event{ID: "$b", Type: "m.room.message", Sender: "@hipaa:h", Content: json.RawMessage(`{"msgtype":"m.notice","body":"x"}`)}
	create := Event{ID: "$c", Type: "m.room.create", Sender: "@doc:h", StateKey: sk(""), Content: json.RawMessage(`{"room_version":"10"}`)}
	public := Event{ID: "$j", Type: "m.room.join_rules", Sender: "@doc:h", StateKey: sk(""), Content: json.RawMessage(`{"join_rule":"public"}`)}
	invite := Event{ID: "$j2", Type: "m.room.join_rules", Sender: "@doc:h", StateKey: sk(""), Content: json.RawMessage(`{"join_rule":"invite"}`)}
	guests := Event{ID: "$g", Type: "m.room.guest_access", Sender: "@doc:h", StateKey: sk(""), Content: json.RawMessage(`{"guest_access":"can_join"}`)}
	noGuests := Event{ID: "$g2", Type: "m.room.guest_access", Sender: "@doc:h", StateKey: sk(""), Content: json.RawMessage(`{"guest_access":"forbidden"}`)}
	stateMsg := Event{ID: "$sm", Type: "m.room.message", Sender: "@doc:h", StateKey: sk("x"), Content: json.RawMessage(`{"body":"odd"}`)}
	garbage := Event{ID: "$x", Type: "m.room.message", Sender: "@doc:h", Content: json.RawMessage(`not json`)}
	poll := Event{ID: "$p", Type: "m.poll.start", Sender: "@doc:h", Content: json.RawMessage(`{"m.poll.start":{"question":{"m.text":"Transfer bed 4?"},"answers":[{"id":"y","m.text":"yes"}]}}`)}
	textReaction := Event{ID: "$tr", Type: "m.reaction", Sender: "@doc:h", Content: json.RawMessage(`{"m.relates_to":{"rel_type":"m.annotation","event_id":"$t","key":"HIV+ confirmed"}}`)}
	emojiReaction := Event{ID: "$er", Type: "m.reaction", Sender: "@doc:h", Content: json.RawMessage(`{"m.relates_to":{"rel_type":"m.annotation","event_id":"$t","key":"👍🏽"}}`)}
	custom := Event{ID: "$cu", Type: "org.example.chart_note", Sender: "@doc:h", Content: json.RawMessage(`{"note":"allergic to penicillin"}`)}
	beacon := Event{ID: "$be", Type: "m.beacon", Sender: "@doc:h", Content: json.RawMessage(`{"m.relates_to":{"rel_type":"m.reference","event_id":"$x"},"org.matrix.msc3488.location":{"uri":"geo:51.5,-0.1"}}`)}
	redaction := Event{ID: "$rd", Type: "m.room.redaction", Sender: "@doc:h", Content: json.RawMessage(`{"redacts":"$t","reason":"typo"}`)}

	cases := []struct {
		name     string
		ev       Event
		room     RoomState
		settings Effective
		want     []string // kind/rule/actAs-or-target/value
	}{
		{"plain text, strict: redact as sender and tell them", text, RoomState{Encrypted: true}, strict(),
			[]string{"redact/plaintext/@doc:h/", "notice/plaintext/@doc:h/"}},
		{"notice names the creator, who can invite the bot", text, RoomState{Encrypted: true, Creator: "@boss:h"}, strict(),
			[]string{"redact/plaintext/@doc:h/", "notice/plaintext/@doc:h<@boss:h/"}},
		{"plain text, warn: notice only", text, RoomState{Encrypted: true}, with(func(e *Effective) { e.Plaintext = PlaintextWarn }),
			[]string{"notice/plaintext/@doc:h/"}},
		{"plain text, allow", text, RoomState{}, with(func(e *Effective) { e.Plaintext = PlaintextAllow }), nil},
		{"plain text, encryption optional", text, RoomState{}, with(func(e *Effective) { e.Encryption = EncryptionOptional }), nil},
		{"sticker is plaintext too", sticker, RoomState{Encrypted: true}, strict(),
			[]string{"redact/plaintext/@doc:h/", "notice/plaintext/@doc:h/"}},
		{"encrypted message never touched", encrypted, RoomState{Encrypted: true}, strict(), nil},
		{"a poll in clear is plaintext", poll, RoomState{Encrypted: true}, strict(), []string{"redact/plaintext/@doc:h/", "notice/plaintext/@doc:h/"}},
		{"a reaction with a text key is plaintext", textReaction, RoomState{Encrypted: true}, strict(), []string{"redact/plaintext/@doc:h/", "notice/plaintext/@doc:h/"}},
		{"an emoji reaction is not (Element sends them unencrypted)", emojiReaction, RoomState{Encrypted: true}, strict(), nil},
		{"a custom type in clear is plaintext", custom, RoomState{Encrypted: true}, strict(), []string{"redact/plaintext/@doc:h/", "notice/plaintext/@doc:h/"}},
		{"a live location in clear is plaintext", beacon, RoomState{Encrypted: true}, strict(), []string{"redact/plaintext/@doc:h/", "notice/plaintext/@doc:h/"}},
		{"a type the policy allows", custom, RoomState{Encrypted: true}, with(func(e *Effective) { e.PlaintextAllowedTypes = []string{"org.example.chart_note"} }), nil},
		{"a redaction is never plaintext", redaction, RoomState{Encrypted: true}, strict(), nil},
		{"already redacted: nothing left", redacted, RoomState{Encrypted: true}, strict(), nil},
		{"the bot's own notice is exempt", botNotice, RoomState{Encrypted: true}, strict(), nil},
		{"state event with a message type is exempt", stateMsg, RoomState{Encrypted: true}, strict(), nil},
		{"unparseable content is not acted on by content rules", garbage, RoomState{Encrypted: true}, with(func(e *Effective) { e.Plaintext = PlaintextAllow }), nil},
		{"plain image where text is allowed: attachments rule", image, RoomState{}, with(func(e *Effective) { e.Plaintext = PlaintextAllow }),
			[]string{"redact/attachments/@doc:h/", "notice/attachments/@doc:h/", "quarantine_media/quarantine/@doc:h/mxc://h/abc"}},
		{"plain sticker where text is allowed", sticker, RoomState{}, with(func(e *Effective) { e.Encryption = EncryptionOptional }),
			[]string{"redact/attachments/@doc:h/", "notice/attachments/@doc:h/"}},
		{"plain image, strict: one redaction, not two", image, RoomState{Encrypted: true}, strict(),
			[]string{"redact/plaintext/@doc:h/", "notice/plaintext/@doc:h/", "quarantine_media/quarantine/@doc:h/mxc://h/abc"}},
		{"plain video with thumbnail: both files quarantined", video, RoomState{Encrypted: true}, strict(),
			[]string{"redact/plaintext/@doc:h/", "notice/plaintext/@doc:h/", "quarantine_media/quarantine/@doc:h/mxc://h/vid", "quarantine_media/quarantine/@doc:h/mxc://h/thumb"}},
		{"plain image, plaintext only warned, attachments allowed: kept", image, RoomState{Encrypted: true},
			with(func(e *Effective) { e.Plaintext = PlaintextWarn; e.Attachments = AttachmentsAllow }), []string{"notice/plaintext/@doc:h/"}},
		{"plain image, text redacted though attachments allowed: quarantined with it", image, RoomState{Encrypted: true},
			with(func(e *Effective) { e.Attachments = AttachmentsAllow }),
			[]string{"redact/plaintext/@doc:h/", "notice/plaintext/@doc:h/", "quarantine_media/quarantine/@doc:h/mxc://h/abc"}},
		{"non-mxc url is not quarantined", httpImage, RoomState{}, with(func(e *Effective) { e.Plaintext = PlaintextAllow }),
			[]string{"redact/attachments/@doc:h/", "notice/attachments/@doc:h/"}},
		{"plain image, attachments allowed, text allowed", image, RoomState{}, with(func(e *Effective) { e.Plaintext = PlaintextAllow; e.Attachments = AttachmentsAllow }), nil},
		{"encrypted attachment (file, no url) is fine", encImage, RoomState{}, with(func(e *Effective) { e.Plaintext = PlaintextAllow }), nil},
		{"new room: enable encryption as its creator", create, RoomState{}, strict(), []string{"enable_encryption/encryption/@doc:h/", "bot_join/encryption/@doc:h/"}},
		{"new room already encrypted", create, RoomState{Encrypted: true}, strict(), nil},
		{"new room, encryption optional", create, RoomState{}, with(func(e *Effective) { e.Encryption = EncryptionOptional }), nil},
		{"made public: back to invite", public, RoomState{}, strict(), []string{"set_join_rule/public_rooms/@doc:h/invite"}},
		{"made public, allowed", public, RoomState{}, with(func(e *Effective) { e.PublicRooms = Allow }), nil},
		{"invite-only is fine", invite, RoomState{}, strict(), nil},
		{"guests enabled: turned off", guests, RoomState{}, strict(), []string{"set_guest_access/guest_access/@doc:h/forbidden"}},
		{"guests enabled, allowed", guests, RoomState{}, with(func(e *Effective) { e.GuestAccess = Allow }), nil},
		{"guests forbidden is fine", noGuests, RoomState{}, strict(), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			acts := Decide(&Context{Event: tc.ev, Room: tc.room, Settings: tc.settings, Bot: "@hipaa:h"})
			var got []string
			for _, a := range acts {
				who := a.ActAs
				if a.Kind == ActNotice {
					who = a.Target
					if a.ActAs != "" {
						who += "<" + a.ActAs // who may invite the bot
					}
				}
				got = append(got, fmt.Sprintf("%s/%s/%s/%s", a.Kind, a.Rule, who, a.Value))
				if a.EventID != tc.ev.ID || a.Reason == "" {
					t.Errorf("action %+v lacks its event or reason", a)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}

// Reasons are fixed sentences: nothing from the event may leak into them.
func TestReasonsCarryNoEventText(t *testing.T) {
	ev := Event{ID: "$t", Type: "m.room.message", Sender: "@doc:h", Content: json.RawMessage(`{"msgtype":"m.image","body":"CANARY","url":"mxc://h/media1"}`)}
	for _, s := range []Effective{Builtin(), with(func(e *Effective) { e.Plaintext = PlaintextAllow })} {
		for _, a := range Decide(&Context{Event: ev, Settings: s}) {
			if strings.Contains(fmt.Sprintf("%+v", a), "CANARY") {
				t.Fatalf("action carries event text: %+v", a)
			}
		}
	}
}

func TestEveryRuleIsListedOnce(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Rules {
		if seen[r.Name()] {
			t.Fatalf("rule %s listed twice", r.Name())
		}
		seen[r.Name()] = true
	}
	if len(seen) != 6 {
		t.Fatalf("%d rules", len(seen))
	}
}

func TestIsEmoji(t *testing.T) {
	for s, want := range map[string]bool{
		"👍": true, "👍🏽": true, "❤️": true, "✅": true, "👨‍⚕️": true, "🇺🇸": true, "1️⃣": true, "#⃣": true, "🏴󠁧󠁢󠁳󠁣󠁴󠁿": true,
		"": false, "ok": false, "HIV": false, "1": false, "👍 yes": false, "12": false, "bed 4": false, "👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍👍": false,
	} {
		if IsEmoji(s) != want {
			t.Errorf("IsEmoji(%q) = %v", s, !want)
		}
	}
}

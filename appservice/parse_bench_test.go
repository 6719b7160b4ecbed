package appservice

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"testing"
)

// BenchmarkParseTransaction: a homeserver's transaction of 100 encrypted
// events (the bulk of real traffic), parsed as the endpoint does before
// storing anything.
func BenchmarkParseTransaction(b *testing.B) {
	cipher := base64.RawStdEncoding.EncodeToString(make([]byte, 600))
	events := make([]map[string]any, 100)
	for i := range events {
		events[i] = map[string]any{
			"event_id": fmt.Sprintf("$%043d", i), "room_id": "!abcdefghijklmnop:hospital.example", "type": "m.room.encrypted",
			"sender": "@someone:hospital.example", "origin_server_ts": 1764900000000 + int64(i),
			"content": map[string]any{"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": cipher, "device_id": "ABCDEFGHIJ",
				"sender_key": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "session_id": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
				"m.relates_to": map[string]any{"rel_type": "m.thread", "event_id": "$thread"}},
			"unsigned": map[string]any{"age": 12},
		}
	}
	body, _ := json.Marshal(map[string]any{"events": events})
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for range b.N {
		if _, err := ParseTransaction(body); err != nil {
			b.Fatal(err)
		}
	}
}

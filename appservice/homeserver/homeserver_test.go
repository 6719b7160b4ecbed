package homeserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The request Synapse's quarantine admin API expects: POST
// /_synapse/admin/v1/media/quarantine/{server}/{media_id}, with the
// appservice token, acting as the bot. (No Synapse runs here; this pins the
// request's shape, Synapse's own docs give the contract.)
func TestQuarantineMediaRequest(t *testing.T) {
	var gotMethod, gotPath, gotAuth, gotUser string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotMethod, gotPath, gotAuth, gotUser = r.Method, r.URL.Path, r.Header.Get("Authorization"), r.URL.Query().Get("user_id")
		w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	c := New(srv.URL, "as-token")
	ctx := context.Background()
	if err := c.QuarantineMedia(ctx, "synapse", "@hipaa:h", "mxc://h.example/AbCdEf"); err != nil {
		t.Fatal(err)
	}
	if gotMethod != http.MethodPost || gotPath != "/_synapse/admin/v1/media/quarantine/h.example/AbCdEf" ||
		gotAuth != "Bearer as-token" || gotUser != "@hipaa:h" {
		t.Fatalf("request %s %s auth=%q user_id=%q", gotMethod, gotPath, gotAuth, gotUser)
	}
	gotPath = ""
	for _, sw := range []string{"dendrite", "generic"} {
		if err := c.QuarantineMedia(ctx, sw, "@hipaa:h", "mxc://h/x"); !errors.Is(err, ErrNoQuarantine) {
			t.Fatalf("%s: %v, want ErrNoQuarantine", sw, err)
		}
	}
	if gotPath != "" {
		t.Fatal("a request was made to a homeserver without the API")
	}
	if err := c.QuarantineMedia(ctx, "synapse", "@hipaa:h", "https://not/mxc"); err == nil {
		t.Fatal("a non-mxc URI was accepted")
	}
}

// Synapse's purge_history admin API: POST .../purge_history/{room_id} with
// purge_up_to_ts and delete_local_events, as the bot; then the purge's
// status until it is complete or failed. (TestSynapsePurgeRemovesExpired-
// History runs it against the real Synapse.)
func TestPurgeHistoryWaitsForTheOutcome(t *testing.T) {
	for _, tc := range []struct {
		name     string
		statuses []string
		post     int
		want     error
	}{
		{"complete after a while", []string{"active", "active", "complete"}, http.StatusOK, nil},
		{"failed", []string{"active", "failed"}, http.StatusOK, ErrPurgeFailed},
		{"nothing before the bound", nil, http.StatusNotFound, ErrNothingToPurge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var gotPath, gotUser string
			var body map[string]any
			polls := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet {
					if r.URL.EscapedPath() != "/_synapse/admin/v1/purge_history_status/p1" {
						t.Errorf("status path %s", r.URL.EscapedPath())
					}
					json.NewEncoder(w).Encode(map[string]string{"status": tc.statuses[min(polls, len(tc.statuses)-1)], "error": "boom"})
					polls++
					return
				}
				gotPath, gotUser = r.URL.EscapedPath(), r.URL.Query().Get("user_id")
				json.NewDecoder(r.Body).Decode(&body)
				w.WriteHeader(tc.post)
				if tc.post == http.StatusNotFound {
					w.Write([]byte(`{"errcode":"M_NOT_FOUND","error":"there is no event to be purged"}`))
					return
				}
				w.Write([]byte(`{"purge_id":"p1"}`))
			}))
			defer srv.Close()
			err := New(srv.URL, "as").PurgeHistory(context.Background(), "@hipaa:h", "!room:h", 1234567)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if gotPath != "/_synapse/admin/v1/purge_history/%21room:h" || gotUser != "@hipaa:h" ||
				body["purge_up_to_ts"] != float64(1234567) || body["delete_local_events"] != true {
				t.Fatalf("request %s user %s body %v", gotPath, gotUser, body)
			}
			if polls != len(tc.statuses) {
				t.Fatalf("status asked %d times, want %d", polls, len(tc.statuses))
			}
		})
	}
}

// Synapse's device deletion and deactivation admin APIs, as the bot: the
// paths, bodies and acting user Synapse documents.
func TestSynapseWipeRequests(t *testing.T) {
	type call struct {
		method, path, user string
		body               map[string]any
	}
	var calls []call
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := call{method: r.Method, path: r.URL.EscapedPath(), user: r.URL.Query().Get("user_id")}
		json.NewDecoder(r.Body).Decode(&c.body)
		calls = append(calls, c)
		w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	c := New(srv.URL, "as")
	ctx := context.Background()
	if err := c.DeleteDevices(ctx, "@hipaa:h", "@bob:h", []string{"PHONE", "LAPTOP"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Deactivate(ctx, "@hipaa:h", "@bob:h"); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 2 {
		t.Fatalf("%d calls", len(calls))
	}
	del, deact := calls[0], calls[1]
	if del.method != http.MethodPost || del.path != "/_synapse/admin/v2/users/@bob:h/delete_devices" || del.user != "@hipaa:h" ||
		fmt.Sprint(del.body["devices"]) != "[PHONE LAPTOP]" {
		t.Fatalf("delete_devices: %+v", del)
	}
	if deact.method != http.MethodPost || deact.path != "/_synapse/admin/v1/deactivate/@bob:h" || deact.user != "@hipaa:h" || deact.body["erase"] != false {
		t.Fatalf("deactivate: %+v", deact)
	}
}

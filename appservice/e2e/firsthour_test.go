package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// needsAttention is what each of the service's four views says: `rooms`'
// count and -problems exit, `status`'s count, the gauge, and whether the
// MatrixHipaaRoomsNotEnforced alert's expression selects a positive value.
type needsAttention struct {
	rooms, status, gauge int
	problemsExit         bool
	alert                bool
}

func attentionViews(t *testing.T, st *devstack.Stack) (needsAttention, string) {
	t.Helper()
	var v needsAttention
	out, _, err := st.Service("rooms", "-problems")
	v.problemsExit = err != nil
	m := regexp.MustCompile(`(\d+) rooms, (\d+) needing attention`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("rooms -problems:\n%s", out)
	}
	v.rooms, _ = strconv.Atoi(m[2])
	status, _, err := st.Service("status")
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if m := regexp.MustCompile(`(\d+) known, (\d+) need attention`).FindStringSubmatch(string(status)); m != nil {
		v.status, _ = strconv.Atoi(m[2])
	} else {
		t.Fatalf("status:\n%s", status)
	}
	// The alert's own expression: the standing it selects, read from the
	// service's metrics.
	rules, err := os.ReadFile(filepath.Join(repoRoot(t), "deploy", "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	expr := regexp.MustCompile(`(?s)alert: MatrixHipaaRoomsNotEnforced\s+expr: (hipaa_rooms\{[^}]*standing="(\w+)"\} > 0)`).FindStringSubmatch(string(rules))
	if expr == nil {
		t.Fatal("MatrixHipaaRoomsNotEnforced no longer selects one standing of hipaa_rooms")
	}
	metrics := string(httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", st.Opts.MetricsPort)))
	g := regexp.MustCompile(`(?m)^hipaa_rooms\{standing="` + expr[2] + `"\} (\d+)`).FindStringSubmatch(metrics)
	if g == nil {
		t.Fatalf("no hipaa_rooms{standing=%q} in the metrics", expr[2])
	}
	v.gauge, _ = strconv.Atoi(g[1])
	v.alert = v.gauge > 0
	return v, string(out)
}

func repoRoot(t *testing.T) string {
	root, err := devstack.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// The service's four views of which rooms need someone agree: an ordinary
// room someone creates (enrolled, encrypted, the bot at power 0 in it, the
// normal case) needs nobody in any of them; a room where an action failed
// for good (its creator made encryption need more power than anyone has, so
// it cannot be enrolled, on any homeserver) needs attention in all four.
func TestRoomsStatusMetricAndAlertAgree(t *testing.T) {
	st := startStack(t, devstack.Options{})
	ctx := context.Background()
	alice := newE2EEUser(t, st, "alice")
	botID := id.UserID("@hipaa:" + st.Opts.ServerName)
	ordinary := enrolledRoom(t, st, alice)
	waitFor(t, "the bot in the ordinary room", func() bool {
		m, err := alice.JoinedMembers(ctx, ordinary)
		return err == nil && hasMember(m, botID)
	})
	var v needsAttention
	var listing string
	waitFor(t, "the views to settle on the ordinary room", func() bool {
		v, listing = attentionViews(t, st)
		return strings.Contains(listing, "1 rooms, ") && strings.Contains(string(httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", st.Opts.MetricsPort))), `hipaa_rooms{standing="bot_underpowered"} 1`)
	})
	if v != (needsAttention{}) {
		t.Fatalf("an ordinary room needs attention somewhere: %+v\n%s", v, listing)
	}
	full, _, _ := st.Service("rooms")
	if !strings.Contains(string(full), "(bot at power 0") {
		t.Fatalf("the ordinary room does not show the bot without power:\n%s", full)
	}

	broken, err := alice.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "private_chat",
		PowerLevelOverride: &event.PowerLevelsEventContent{
			Users:  map[id.UserID]int{alice.UserID: 100},
			Events: map[string]int{event.StateEncryption.Type: 101},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all four views to see the broken room", func() bool {
		v, listing = attentionViews(t, st)
		return v.gauge == 1
	})
	if v != (needsAttention{rooms: 1, status: 1, gauge: 1, problemsExit: true, alert: true}) || !strings.Contains(listing, string(broken.RoomID)) ||
		strings.Contains(listing, string(ordinary)) {
		t.Fatalf("the views disagree on the broken room: %+v\n%s", v, listing)
	}
}

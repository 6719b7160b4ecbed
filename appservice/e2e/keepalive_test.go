package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
)

// With homeserver.keepalive set, the bot posts in its own room while the
// server is idle, the echoes come back through Dendrite and are dropped, and
// none of it reaches the audit trail.
func TestKeepAlive(t *testing.T) {
	st := startStack(t, devstack.Options{KeepAlive: "1s"})
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", st.Opts.MetricsPort)
	sentRE := regexp.MustCompile(`(?m)^hipaa_keepalive_sent_total (\d+)`)
	droppedRE := regexp.MustCompile(`(?m)^hipaa_events_total\{class="keepalive",delivery="dropped"\} (\d+)`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		m := httpGet(t, metricsURL)
		sent, dropped := 0, 0
		if g := sentRE.FindSubmatch(m); g != nil {
			sent, _ = strconv.Atoi(string(g[1]))
		}
		if g := droppedRE.FindSubmatch(m); g != nil {
			dropped, _ = strconv.Atoi(string(g[1]))
		}
		if sent >= 3 && dropped >= 2 {
			t.Logf("keep-alives sent %d, echoes dropped %d", sent, dropped)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("keep-alive: sent %d, echoes dropped %d", sent, dropped)
		}
		time.Sleep(500 * time.Millisecond)
	}
	lines, _ := export(t, st)
	for _, l := range lines {
		if l.EventType == "org.matrix_hipaa.keepalive" {
			t.Fatalf("a keep-alive reached the audit trail: %+v", l)
		}
	}
	// The bot's own room is under policy like any other (encrypted, no
	// guests): it needs nobody, and fires no alert.
	v, listing := attentionViews(t, st)
	if v != (needsAttention{}) || !strings.Contains(listing, "1 rooms, 0 needing attention") {
		t.Fatalf("the keep-alive room needs attention: %+v\n%s", v, listing)
	}
}

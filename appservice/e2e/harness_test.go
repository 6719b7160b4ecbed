// Package e2e runs matrix-hipaa against a real homeserver on loopback,
// driven by real Matrix clients: Dendrite v0.13.8, or Debian sid's Synapse
// when MATRIX_HIPAA_TEST_HOMESERVER=synapse (deploy/test.sh runs both).
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/id"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/deploy/devstack"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

var (
	dendriteBin string
	synapseRoot string
	serviceBin  string
	// homeserver is what this run's stacks use: dendrite or synapse.
	homeserver = "dendrite"
)

func TestMain(m *testing.M) {
	os.Exit(func() int {
		ctx := context.Background()
		root, err := devstack.RepoRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		dir, err := os.MkdirTemp("", "matrix-hipaa-e2e-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		serviceBin = filepath.Join(dir, "matrix-hipaa")
		if err := devstack.BuildService(ctx, root, serviceBin, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if hs := os.Getenv("MATRIX_HIPAA_TEST_HOMESERVER"); hs != "" {
			homeserver = hs
		}
		switch homeserver {
		case "dendrite":
			dendriteBin, err = devstack.BuildDendrite(ctx, os.Stderr)
		case "synapse":
			synapseRoot, _, err = devstack.BuildSynapse(ctx, os.Stderr)
		default:
			err = fmt.Errorf("MATRIX_HIPAA_TEST_HOMESERVER=%q: dendrite or synapse", homeserver)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}())
}

// onEachDatabase runs test against a fresh stack on SQLite and on PostgreSQL.
func onEachDatabase(t *testing.T, test func(*testing.T, *devstack.Stack)) {
	for _, dbType := range storetest.Dialects {
		t.Run(dbType, func(t *testing.T) {
			opts := devstack.Options{}
			if dbType == "postgres" {
				opts.DatabaseType, opts.DatabaseURI = dbType, storetest.NewURI(t, dbType)
			}
			test(t, startStack(t, opts))
		})
	}
}

// startStack brings up Dendrite and matrix-hipaa for one test (Dendrite
// alone with NoAppService).
func startStack(t *testing.T, opts devstack.Options) *devstack.Stack {
	t.Helper()
	opts.StateDir = t.TempDir()
	opts.Homeserver, opts.DendriteBin, opts.SynapseRoot = homeserver, dendriteBin, synapseRoot
	opts.ServiceBin = serviceBin
	st, err := devstack.Prepare(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		st.Stop()
		if t.Failed() {
			if !opts.NoAppService {
				dumpTail(t, "matrix-hipaa log", st.ServiceLog)
			}
			dumpTail(t, homeserver+" log ("+st.Opts.ServerName+")", st.DendriteLog)
		}
		st.RemoveHomeserverData()
	})
	if err := st.StartDendrite(ctx); err != nil {
		t.Fatal(err)
	}
	if opts.NoAppService {
		return st // a homeserver alone: another server, for federation tests
	}
	if err := st.StartService(ctx); err != nil {
		t.Fatal(err)
	}
	return st
}

func dumpTail(t *testing.T, name, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if dir := os.Getenv("MATRIX_HIPAA_TEST_KEEP_LOGS"); dir != "" {
		// Whole logs of a failed test, for a flake that needs them.
		os.WriteFile(filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+"-"+filepath.Base(path)), data, 0o600)
	}
	if len(data) > 20000 {
		data = data[len(data)-20000:]
	}
	t.Logf("--- %s (tail) ---\n%s", name, data)
}

// newAccount creates an account and returns a client not yet logged in.
func newAccount(t *testing.T, st *devstack.Stack, localpart string) (*mautrix.Client, string) {
	t.Helper()
	password := "pw-" + localpart + "-0123456789"
	if _, err := st.CreateUser(context.Background(), localpart, password, false); err != nil {
		t.Fatal(err)
	}
	cli, err := mautrix.NewClient(st.HSURL, "", "")
	if err != nil {
		t.Fatal(err)
	}
	return cli, password
}

// newUser creates an account and logs in with its password, as Element would.
func newUser(t *testing.T, st *devstack.Stack, localpart string) *mautrix.Client {
	t.Helper()
	ctx := context.Background()
	cli, password := newAccount(t, st, localpart)
	_, err := cli.Login(ctx, &mautrix.ReqLogin{
		Type:             mautrix.AuthTypePassword,
		Identifier:       mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: localpart},
		Password:         password,
		StoreCredentials: true,
	})
	if err != nil {
		t.Fatalf("login %s: %v", localpart, err)
	}
	return cli
}

type auditLine struct {
	Seq       int64  `json:"seq"`
	Time      string `json:"time"`
	Type      string `json:"type"`
	Outcome   string `json:"outcome"`
	Actor     string `json:"actor"`
	Room      string `json:"room"`
	EventID   string `json:"event_id"`
	EventType string `json:"event_type"`
	Detail    string `json:"detail"`
	Action    string `json:"action"`
	// PolicyVersion is the policy file's hash (policy.load records).
	PolicyVersion string `json:"policy_version"`
}

// export runs `matrix-hipaa audit export` and parses its output.
func export(t *testing.T, st *devstack.Stack) ([]auditLine, []byte) {
	t.Helper()
	out, errOut, err := st.Service("audit", "export", "-format", "jsonl")
	if err != nil {
		t.Fatalf("audit export: %v: %s", err, errOut)
	}
	var lines []auditLine
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("export line is not JSON: %q", sc.Text())
		}
		lines = append(lines, l)
	}
	return lines, out
}

// receivedCounts counts event.received records per event ID.
func receivedCounts(lines []auditLine) map[string]int {
	out := map[string]int{}
	for _, l := range lines {
		if l.Type == "event.received" {
			out[l.EventID]++
		}
	}
	return out
}

// waitAudited polls the audit export until every event ID is in it.
func waitAudited(t *testing.T, st *devstack.Stack, ids []id.EventID, timeout time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		lines, _ := export(t, st)
		counts := receivedCounts(lines)
		missing := 0
		for _, e := range ids {
			if counts[string(e)] == 0 {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			if missing > 0 {
				t.Errorf("%d of %d events never reached the audit trail", missing, len(ids))
			}
			return counts
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func verify(t *testing.T, st *devstack.Stack) string {
	t.Helper()
	out, errOut, err := st.Service("audit", "verify")
	if err != nil {
		t.Fatalf("audit verify failed: %v\n%s%s", err, out, errOut)
	}
	return string(out)
}

func httpGet(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

// setPolicy replaces the service's policy file and waits until the service
// has put it in force.
func setPolicy(t *testing.T, st *devstack.Stack, yaml []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(filepath.Dir(st.ServiceConfig), "policy.yaml"), yaml, 0o600); err != nil {
		t.Fatal(err)
	}
	// This file's load, not an earlier one's.
	hash := policy.HashOf(yaml)
	waitAudit(t, st, "the new policy in force", func(l auditLine) bool {
		return l.Type == "policy.load" && l.Outcome == "success" && l.Detail == "file-changed" && l.PolicyVersion == hash
	})
}

// adminToken is the admin HTTP API's bearer token in tests that turn it on.
const adminToken = "admin-token-for-e2e-0123456789abcdef"

// serviceDB opens the service's SQLite database beside its config (params
// are DSN options, e.g. "mode=ro"); it is closed when the test ends.
func serviceDB(t *testing.T, st *devstack.Stack, params string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+filepath.Join(filepath.Dir(st.ServiceConfig), "matrix-hipaa.db")+"?"+params)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// botOf is the service's bot user, as its config names it.
func botOf(t *testing.T, st *devstack.Stack) id.UserID {
	t.Helper()
	cfg, err := config.Load(st.ServiceConfig)
	if err != nil {
		t.Fatal(err)
	}
	return id.UserID(cfg.BotMXID())
}

// enrolledRoom creates a private room as u (inviting invite) and waits until
// policy has made it encrypted and the bot has joined.
func enrolledRoom(t *testing.T, st *devstack.Stack, u *e2eeUser, invite ...id.UserID) id.RoomID {
	t.Helper()
	ctx := context.Background()
	bot := botOf(t, st)
	room, err := u.CreateRoom(ctx, &mautrix.ReqCreateRoom{Preset: "private_chat", Invite: invite})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the bot in the enrolled room", func() bool {
		m, err := u.JoinedMembers(ctx, room.RoomID)
		enc, _ := u.StateStore.IsEncrypted(ctx, room.RoomID)
		return err == nil && hasMember(m, bot) && enc
	})
	return room.RoomID
}

// Package pushers finds the users whose phones may show message text on
// the lock screen: each local user's pushers are listed (on Synapse every
// user, through the admin API; elsewhere every local user the service has
// seen joined to a room, through the client API acting as them), and a pusher
// whose push gateway is sent whole events (not event_id_only) is reported,
// in `status`, a metric and the management room. Homeserver-wide,
// `push.include_content: false` in Synapse's config strips the content
// whatever the pusher asks.
package pushers

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/homeserver"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
)

// JobNotice tells the management room of users newly found with such
// pushers.
const JobNotice = "pusher_notice"

// Lister is what the check needs of the homeserver.
type Lister interface {
	LocalUsers(ctx context.Context) ([]string, error)
	UserPushers(ctx context.Context, admin, user string) ([]homeserver.Pusher, error)
}

// Noticer posts in the management room.
type Noticer interface {
	SendNotice(ctx context.Context, room, inviter, target, text, txnID string) error
}

// Feature is the pusher check.
type Feature struct {
	env    appservice.Env
	HS     Lister
	Notice Noticer
	// Every is how often the check runs; 0 turns it off.
	Every time.Duration
}

// New is the pusher check on env's homeserver: Synapse's admin API lists
// every user and their pushers; elsewhere the users are those the service
// has seen joined to rooms, each asked as themselves.
func New(env appservice.Env) *Feature {
	f := &Feature{env: env, Every: env.Config.Homeserver.PusherCheckInterval.D()}
	if env.Bot != nil {
		f.Notice = env.Bot
	}
	if env.HS != nil {
		f.HS = env.HS
		if env.Config.Homeserver.Software != "synapse" {
			f.HS = SeenUsers{DB: env.DB, Domain: env.Config.Homeserver.Domain, HS: env.HS}
		}
	}
	return f
}

// SeenUsers lists pushers without an admin API: the local users the
// service has seen joined to rooms, each asked through the client API as
// themselves (the application service may act as any local user).
type SeenUsers struct {
	DB     *store.DB
	Domain string
	HS     interface {
		OwnPushers(ctx context.Context, user string) ([]homeserver.Pusher, error)
	}
}

// LocalUsers are the local users joined to a room the service knows.
func (s SeenUsers) LocalUsers(ctx context.Context) ([]string, error) {
	return appservice.JoinedUsers(ctx, s.DB, s.Domain)
}

// UserPushers asks as the user.
func (s SeenUsers) UserPushers(ctx context.Context, _, user string) ([]homeserver.Pusher, error) {
	return s.HS.OwnPushers(ctx, user)
}

func (f *Feature) Name() string { return "pushers" }

// Jobs handle the management room notice.
func (f *Feature) Jobs() map[string]appservice.Handler {
	return map[string]appservice.Handler{JobNotice: f.notice}
}

// Loops run the check at start and then every interval.
func (f *Feature) Loops() []func(context.Context) {
	if f.Every <= 0 || f.HS == nil {
		return nil
	}
	return []func(context.Context){func(ctx context.Context) {
		// The listing is made on the bot's own session (Synapse).
		if f.env.Bot != nil {
			select {
			case <-ctx.Done():
				return
			case <-f.env.Bot.Ready():
			}
		}
		for {
			if err := f.Check(ctx); err != nil && ctx.Err() == nil {
				f.env.Log.Warn().Str("error", appservice.SafeError(err)).Msg("pusher check failed; trying again next interval")
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(f.Every):
			}
		}
	}}
}

// Check lists every local user's pushers and stores the result, replacing
// the last. A user newly found with a pusher sent whole events is audited
// (pseudonym only) and, with a management room, the room is told.
func (f *Feature) Check(ctx context.Context) error {
	bot := f.env.BotUser
	users, err := f.HS.LocalUsers(ctx)
	if err != nil {
		return fmt.Errorf("list users: %w", err)
	}
	type row struct {
		user           string
		total, content int
	}
	var rows []row
	for _, u := range users {
		if u == bot || strings.HasPrefix(u, "@"+f.env.Config.SenderLocalpart()+":") {
			continue
		}
		ps, err := f.HS.UserPushers(ctx, bot, u)
		if err != nil {
			return fmt.Errorf("list pushers: %w", err)
		}
		r := row{user: u, total: len(ps)}
		for _, p := range ps {
			if !p.EventIDOnly {
				r.content++
			}
		}
		if r.total > 0 {
			rows = append(rows, r)
		}
	}
	now := f.env.Now()
	flagged := 0
	err = f.env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		before := map[string]bool{}
		q, err := f.env.DB.Query(ctx, tx, `SELECT user_id FROM pusher_check WHERE with_content > 0`)
		if err != nil {
			return err
		}
		for q.Next() {
			var u string
			if err := q.Scan(&u); err != nil {
				q.Close()
				return err
			}
			before[u] = true
		}
		if err := q.Close(); err != nil {
			return err
		}
		if _, err := f.env.DB.Exec(ctx, tx, `DELETE FROM pusher_check`); err != nil {
			return err
		}
		keys := f.env.Chain.Keys()
		var recs []*audit.Record
		for _, r := range rows {
			if _, err := f.env.DB.Exec(ctx, tx, `INSERT INTO pusher_check (user_id, pushers, with_content, checked_at) VALUES ($1, $2, $3, $4)`,
				r.user, r.total, r.content, now.UnixMilli()); err != nil {
				return err
			}
			if r.content > 0 {
				flagged++
				if !before[r.user] {
					recs = append(recs, &audit.Record{Type: audit.TypePolicyDecision, Outcome: audit.OutcomeSuccess, Actor: keys.User(r.user),
						Action: "pusher_check", Detail: "pusher-sends-content", Count: int64(r.content)})
				}
			}
		}
		if _, err := f.env.DB.Exec(ctx, tx, `INSERT INTO pusher_check_run (id, checked_at, users) VALUES (1, $1, $2)
			ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at, users = excluded.users`, now.UnixMilli(), len(users)); err != nil {
			return err
		}
		if len(recs) > 0 && f.env.Config.Admin.Room != "" {
			payload, _ := json.Marshal(appservice.ActionPayload{Room: f.env.Config.Admin.Room, ActAs: bot, Reason: "users with pushers sent whole events"})
			if err := appservice.Enqueue(ctx, f.env.DB, tx, now, appservice.JobSpec{Kind: JobNotice, DedupeKey: fmt.Sprintf("pushers:%d", now.UnixMilli()), Payload: payload}); err != nil {
				return err
			}
		}
		return f.env.Chain.Append(ctx, tx, recs...)
	})
	if err != nil {
		return err
	}
	f.env.Metrics.PushersWithContent.Set(float64(flagged))
	f.env.Wake()
	return nil
}

// Flagged is the last check: the users with a pusher sent whole events
// (sorted), how many users it looked at, and when it finished (0: never).
func Flagged(ctx context.Context, db *store.DB) (users []string, checked int, at int64, err error) {
	err = db.R.QueryRowContext(ctx, `SELECT checked_at, users FROM pusher_check_run WHERE id = 1`).Scan(&at, &checked)
	if err == sql.ErrNoRows {
		return nil, 0, 0, nil
	}
	if err != nil {
		return nil, 0, 0, err
	}
	rows, err := db.R.QueryContext(ctx, `SELECT user_id FROM pusher_check WHERE with_content > 0 ORDER BY user_id`)
	if err != nil {
		return nil, 0, 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			return nil, 0, 0, err
		}
		users = append(users, u)
	}
	return users, checked, at, rows.Err()
}

// Advice is what an admin can do about it, for every place that reports it.
const Advice = "their phones may show message text on the lock screen. Set push.include_content: false in Synapse's homeserver.yaml (every push is then sent without content), or have them use a client whose pusher asks for event_id_only."

// Report is the management room's and status's text for the last check.
func Report(users []string) string {
	if len(users) == 0 {
		return "No user has a pusher that is sent message content."
	}
	sort.Strings(users)
	return fmt.Sprintf("%d user(s) have a pusher that is sent whole events (not event_id_only): %s — %s", len(users), strings.Join(users, ", "), Advice)
}

// notice posts the current list in the management room.
func (f *Feature) notice(ctx context.Context, j *appservice.Job) error {
	p, err := appservice.DecodePayload[appservice.ActionPayload](j)
	if err != nil {
		return err
	}
	if f.Notice == nil {
		return appservice.Permanent(fmt.Errorf("no bot to post in the management room"))
	}
	users, _, _, err := Flagged(ctx, f.env.DB)
	if err != nil {
		return err
	}
	return f.Notice.SendNotice(ctx, p.Room, "", "", Report(users), fmt.Sprintf("hipaa-job-%d", j.ID))
}

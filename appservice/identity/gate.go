package identity

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// JobCheckMember decides whether someone invited to, or in, a room limited
// to verified clinicians may stay, and undoes the invite or join if not.
const JobCheckMember = "check_member"

type memberPayload struct {
	Room       string `json:"room"`
	EventID    string `json:"event_id,omitempty"`
	User       string `json:"user"`
	Membership string `json:"membership"`
	Sender     string `json:"sender,omitempty"` // who invited
	Creator    string `json:"creator,omitempty"`
	// Sweep: found by the periodic check of existing members (a licence
	// that expired, a revoked verification), not by a new event.
	Sweep bool `json:"sweep,omitempty"`
}

// memberCheckJob is the check of one invite or join in a gated room.
func memberCheckJob(ev *appservice.Event, membership string, room *appservice.RoomInfo) appservice.JobSpec {
	payload, _ := json.Marshal(memberPayload{Room: ev.RoomID, EventID: ev.ID, User: *ev.StateKey, Membership: membership,
		Sender: ev.Sender, Creator: room.State.Creator})
	return appservice.JobSpec{Kind: JobCheckMember, DedupeKey: "member:" + ev.ID, Payload: payload}
}

// GateHomeserver is what the membership gate needs of the homeserver.
type GateHomeserver interface {
	Kick(ctx context.Context, actAs, room, user, reason string) error
	Membership(ctx context.Context, actAs, room, user string) (eventID, membership string, err error)
}

// GateBot is what the membership gate needs of the E2EE bot.
type GateBot interface {
	Kick(ctx context.Context, room, user, reason string) error
	SendNotice(ctx context.Context, room, inviter, target, text, txnID string) error
}

// GateDeps is what the membership gate needs.
type GateDeps struct {
	HS     GateHomeserver
	Bot    GateBot
	Policy func() *policy.Policy
	Exempt func(user string) bool
}

// gateJobs handle check_member jobs.
func gateJobs(env appservice.Env, g GateDeps) map[string]appservice.Handler {
	return map[string]appservice.Handler{JobCheckMember: memberGateHandler(env, g)}
}

// memberGateHandler checks one invite or join (or a sweep's finding).
func memberGateHandler(env appservice.Env, g GateDeps) appservice.Handler {
	return func(ctx context.Context, j *appservice.Job) error {
		p, err := appservice.DecodePayload[memberPayload](j)
		if err != nil {
			return err
		}
		// Still there? (They may have left, or been removed already.)
		var cur string
		err = env.DB.R.QueryRowContext(ctx, `SELECT membership FROM room_member WHERE room_id = $1 AND user_id = $2`, p.Room, p.User).Scan(&cur)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if cur != "" && cur != "join" && cur != "invite" {
			return nil
		}
		room, err := appservice.LoadKnownRoom(ctx, env.DB, p.Room)
		if err != nil {
			return err
		}
		settings := g.Policy().For(room.Policy)
		entry, err := LookupClinician(ctx, env.DB, p.User)
		if err != nil {
			return err
		}
		v := policy.DecideMember(settings, entry.Member(p.User, g.Exempt(p.User)), env.Now())
		keys := env.Chain.Keys()
		rec := &audit.Record{Type: audit.TypeMembership, Outcome: audit.OutcomeSuccess, Actor: keys.User(p.User), Room: keys.Room(p.Room),
			EventID: p.EventID, Action: "admit", JobID: j.ID}
		if !v.Allowed {
			// Let in for now by emergency access (break the glass)?
			open, err := OpenGrant(ctx, env.DB, p.Room, p.User, env.Now())
			if err != nil {
				return err
			}
			if open {
				v, rec.Detail = policy.MemberVerdict{Allowed: true}, "break_glass"
			}
		}
		if v.Allowed {
			if p.Sweep || settings.Members != policy.MembersVerified {
				return nil
			}
			if j.Attempts == 0 {
				if err := env.Chain.AppendTx(ctx, env.DB, rec); err != nil {
					return err
				}
			}
			if p.Membership == "join" && settings.Announce && entry != nil && g.Bot != nil {
				return g.Bot.SendNotice(ctx, p.Room, p.Creator, "", fmt.Sprintf("%s joined: %s.", p.User, describeClinician(entry)), "announce-"+p.EventID)
			}
			return nil
		}
		// Only the membership this job is about is undone: if a newer one
		// exists (invited again, say, after being verified), its own check
		// decides; a sweep acts on whatever membership stands.
		evID, now, err := g.HS.Membership(ctx, p.Creator, p.Room, p.User)
		if err != nil && p.Creator != "" {
			evID, now, err = g.HS.Membership(ctx, "", p.Room, p.User) // as the bot
		}
		if err != nil {
			return err
		}
		if (now != "join" && now != "invite") || (!p.Sweep && p.EventID != "" && evID != "" && evID != p.EventID) {
			return nil
		}
		rec.Action, rec.Detail = "refuse", v.Code
		if p.Sweep {
			rec.Action = "remove"
		}
		if j.Attempts == 0 {
			if err := env.Chain.AppendTx(ctx, env.DB, rec); err != nil {
				return err
			}
		}
		// As the creator (who has the power in rooms people make), else the bot.
		err = g.HS.Kick(ctx, p.Creator, p.Room, p.User, v.Reason)
		if (p.Creator == "" || errors.Is(err, mautrix.MForbidden)) && g.Bot != nil {
			err = g.Bot.Kick(ctx, p.Room, p.User, v.Reason)
		}
		if err != nil {
			return err
		}
		if g.Bot == nil {
			return nil
		}
		// Whoever brought them in is told why; a removal is told to the room.
		text := fmt.Sprintf("%s was removed: %s.", p.User, v.Others)
		target, txn := "", "removed-"+p.Room+"-"+p.User+"-"+fmt.Sprint(j.ID)
		if p.Membership == "invite" && p.Sender != "" && p.Sender != p.User {
			text = fmt.Sprintf("your invite of %s was withdrawn: %s.", p.User, v.Others)
			target, txn = p.Sender, "refused-"+p.EventID
		} else if !p.Sweep {
			text = fmt.Sprintf("%s may not join: %s.", p.User, v.Others)
			txn = "refused-" + p.EventID
		}
		return g.Bot.SendNotice(ctx, p.Room, p.Creator, target, text, txn)
	}
}

// MemberSweeper finds members of gated rooms who no longer qualify (their
// licence expired, their verification was revoked or dropped from the
// roster, the room's policy changed) and queues their removal.
type MemberSweeper struct {
	DB     *store.DB
	Policy func() *policy.Policy
	Exempt func(string) bool
	Now    appservice.Clock
	Wake   func()
	Log    zerolog.Logger
	kick   chan struct{}
}

// Poke makes the sweeper look now (the roster changed).
func (s *MemberSweeper) Poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run sweeps every interval, and when poked, until ctx ends.
func (s *MemberSweeper) Run(ctx context.Context, every time.Duration) {
	tick := time.NewTicker(rosterPoll)
	defer tick.Stop()
	for {
		seen, _ := s.rosterVersion(ctx)
		if n, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.Log.Warn().Str("error", appservice.SafeError(err)).Msg("member sweep failed")
		} else if n > 0 {
			s.Log.Info().Int("members", n).Msg("members who no longer qualify queued for removal")
		}
		next := time.After(every)
	wait:
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.kick:
				break wait
			case <-next:
				break wait
			case <-tick.C:
				// A revocation from the CLI or the admin API (another
				// process) is acted on within a second, not at the next
				// full sweep.
				if v, err := s.rosterVersion(ctx); err == nil && v != seen {
					break wait
				}
			}
		}
	}
}

// rosterPoll is how often the sweeper looks for roster changes made by
// other processes.
const rosterPoll = time.Second

// rosterVersion changes whenever the roster does (an entry added, changed,
// revoked or removed).
func (s *MemberSweeper) rosterVersion(ctx context.Context) (string, error) {
	var n, updated, revoked int64
	err := s.DB.R.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(updated_at), 0), COALESCE(SUM(revoked_at), 0) FROM clinician`).Scan(&n, &updated, &revoked)
	return fmt.Sprintf("%d/%d/%d", n, updated, revoked), err
}

// NewMemberSweeper returns a sweeper ready to Run.
func NewMemberSweeper(db *store.DB, pol func() *policy.Policy, exempt func(string) bool, now appservice.Clock, wake func(), log zerolog.Logger) *MemberSweeper {
	return &MemberSweeper{DB: db, Policy: pol, Exempt: exempt, Now: now, Wake: wake, Log: log, kick: make(chan struct{}, 1)}
}

// Sweep checks every joined or invited member of every gated room once and
// returns how many removals it queued.
func (s *MemberSweeper) Sweep(ctx context.Context) (int, error) {
	known, err := appservice.LoadKnownRooms(ctx, s.DB)
	if err != nil {
		return 0, err
	}
	pol := s.Policy()
	type gated struct {
		id, creator string
		settings    policy.Effective
	}
	var rooms []gated
	for _, r := range known.All() {
		if e := pol.For(r.Policy); e.Members == policy.MembersVerified {
			rooms = append(rooms, gated{r.ID, r.Creator, e})
		}
	}
	if len(rooms) == 0 {
		return 0, nil
	}
	entries, err := ListRoster(ctx, s.DB)
	if err != nil {
		return 0, err
	}
	byUser := make(map[string]*RosterEntry, len(entries))
	for i := range entries {
		byUser[entries[i].UserID] = &entries[i]
	}
	var jobs []appservice.JobSpec
	for _, room := range rooms {
		mrows, err := s.DB.R.QueryContext(ctx, `SELECT user_id, membership, updated_at FROM room_member WHERE room_id = $1 AND membership IN ('join', 'invite')`, room.id)
		if err != nil {
			return 0, err
		}
		for mrows.Next() {
			var user, membership string
			var updated int64
			if err := mrows.Scan(&user, &membership, &updated); err != nil {
				mrows.Close()
				return 0, err
			}
			v := policy.DecideMember(room.settings, byUser[user].Member(user, s.Exempt(user)), s.Now())
			if v.Allowed {
				continue
			}
			if open, err := OpenGrant(ctx, s.DB, room.id, user, s.Now()); err != nil || open {
				if err != nil {
					mrows.Close()
					return 0, err
				}
				continue // in by emergency access, until its end removes them
			}
			payload, _ := json.Marshal(memberPayload{Room: room.id, User: user, Membership: membership, Creator: room.creator, Sweep: true})
			jobs = append(jobs, appservice.JobSpec{Kind: JobCheckMember, DedupeKey: fmt.Sprintf("member-sweep:%s:%s:%s:%d", room.id, user, v.Code, updated), Payload: payload})
		}
		mrows.Close()
	}
	if len(jobs) == 0 {
		return 0, nil
	}
	if err := s.DB.Tx(ctx, store.Deferred, func(tx *sql.Tx) error { return appservice.Enqueue(ctx, s.DB, tx, s.Now(), jobs...) }); err != nil {
		return 0, err
	}
	if s.Wake != nil {
		s.Wake()
	}
	return len(jobs), nil
}

package pager

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp"
	"github.com/matrix-hipaa/matrix-hipaa/config"
	"github.com/matrix-hipaa/matrix-hipaa/policy"
)

// Job kinds: a page to send, and a status or reply told in the room.
// Stored: never renamed.
const (
	JobPage   = "page"
	JobNotice = "page_notice"
)

// Noticer posts the bot's notices in a room (encrypted where it is).
type Noticer interface {
	SendNotice(ctx context.Context, room, inviter, target, text, txnID string) error
}

// Feature is the pager bridge on the engine.
type Feature struct {
	env      appservice.Env
	cfg      config.Pager
	gateways map[string]config.Gateway
	// Transports send through each gateway (tests may replace one).
	Transports map[string]Transport
	broken     map[string]error
	Notice     Noticer

	trackMu       sync.Mutex
	tracked       map[string]trackEntry
	trackedPolicy string

	// lengths are what WCTP gateways reported of devices the directory
	// gives no max_length for (LookupSubscriber), by gateway and recipient.
	lengths sync.Map

	mu         sync.RWMutex
	dir        *Directory
	sched      *Schedule
	dirStamp   appservice.FileStamp
	schedStamp appservice.FileStamp
}

// New is the pager bridge with env's config. With no gateways configured
// it does nothing.
func New(env appservice.Env) *Feature {
	f := &Feature{env: env, cfg: env.Config.Pager, gateways: map[string]config.Gateway{}, Transports: map[string]Transport{}, broken: map[string]error{}}
	if env.Bot != nil {
		f.Notice = env.Bot
	}
	for _, g := range f.cfg.Gateways {
		f.gateways[g.Name] = g
		t, err := NewTransport(g)
		if err != nil {
			f.broken[g.Name] = err
			continue
		}
		f.Transports[g.Name] = t
	}
	return f
}

func (f *Feature) Name() string { return "pager" }

// Enabled reports whether any gateway is configured.
func (f *Feature) Enabled() bool { return len(f.gateways) > 0 }

// Jobs send pages and tell rooms what became of them.
func (f *Feature) Jobs() map[string]appservice.Handler {
	return map[string]appservice.Handler{JobPage: f.sendPage, JobNotice: f.notice}
}

// Start loads the directory and the schedule; a file that does not load
// is reported, and pages that need it fail until it does.
func (f *Feature) Start(ctx context.Context) {
	if !f.Enabled() {
		return
	}
	for name, err := range f.broken {
		f.env.Log.Error().Str("gateway", name).Str("error", err.Error()).Msg("pager gateway cannot be used; its pages fail until the config is fixed")
	}
	for name, g := range f.gateways {
		if g.Protocol == "snpp" {
			f.env.Log.Warn().Str("gateway", name).Msg("SNPP has no encryption: this gateway is sent the page template only, in clear")
		}
	}
	f.reload(ctx, true)
}

// Loops reload the directory and schedule when they change, and poll
// gateways that cannot push.
func (f *Feature) Loops() []func(context.Context) {
	if !f.Enabled() {
		return nil
	}
	loops := []func(context.Context){f.escalateLoop, func(ctx context.Context) {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				f.reload(ctx, false)
			}
		}
	}}
	for name, g := range f.gateways {
		switch {
		case g.Protocol == "wctp" && g.PollInterval > 0:
			loops = append(loops, func(ctx context.Context) { f.poll(ctx, name, g) })
		case g.Protocol == "snpp" && g.TwoWay && g.PollInterval > 0:
			loops = append(loops, func(ctx context.Context) { f.pollStatus(ctx, name, g) })
		}
	}
	return loops
}

// Routes is the WCTP endpoint gateways push statuses and replies to.
func (f *Feature) Routes() map[string]http.Handler {
	routes := map[string]http.Handler{}
	for name, g := range f.gateways {
		if g.Protocol != "wctp" {
			continue
		}
		routes["/_hipaa/wctp/"+name] = &wctp.Handler{
			SecurityCode: f.cfg.EndpointSecurityCode.Reveal(), Responder: f.env.Config.AppService.ID,
			Receive: func(ctx context.Context, in wctp.Inbound) error { return f.Receive(ctx, name, in) },
			Now:     f.env.Now,
		}
	}
	return routes
}

// reload loads a file whose stamp changed, keeping the last good one on
// an error (logged as file:line:col, and audited).
func (f *Feature) reload(ctx context.Context, first bool) {
	names := map[string]bool{}
	for n := range f.gateways {
		names[n] = true
	}
	if p := f.cfg.Directory; p != "" {
		if st := appservice.StampOf(p); st != f.dirStamp || first {
			d, err := LoadDirectory(p, names)
			f.loaded(ctx, "directory", err, func() { f.dir, f.dirStamp = d, st })
			if err != nil {
				f.dirStamp = st
			} else {
				go f.lookupLengths(ctx, d)
			}
		}
	}
	if p := f.cfg.Schedule; p != "" {
		if st := appservice.StampOf(p); st != f.schedStamp || first {
			s, err := LoadSchedule(p)
			f.loaded(ctx, "schedule", err, func() { f.sched, f.schedStamp = s, st })
			if err != nil {
				f.schedStamp = st
			}
		}
	}
}

func (f *Feature) loaded(ctx context.Context, what string, err error, keep func()) {
	rec := &audit.Record{Type: audit.TypeAdminCommand, Outcome: audit.OutcomeSuccess, Action: "pager-" + what + "-load"}
	if err != nil {
		rec.Outcome = audit.OutcomeFailure
		f.env.Log.Error().Str("file", what).Str("error", err.Error()).Msg("pager file refused; the last good one stays in force")
	} else {
		f.mu.Lock()
		keep()
		f.mu.Unlock()
		f.env.Log.Info().Str("file", what).Msg("pager file loaded")
	}
	if aerr := f.env.Chain.AppendTx(ctx, f.env.DB, rec); aerr != nil {
		f.env.Log.Error().Str("error", aerr.Error()).Msg("could not audit a pager file load")
	}
}

func (f *Feature) files() (*Directory, *Schedule) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.dir, f.sched
}

// SeesCiphertext: pages and escalations follow encrypted messages too,
// where the policy links any room to pagers or tracks reads in any.
func (f *Feature) SeesCiphertext(pol *policy.Policy, _ *appservice.RoomInfo) bool {
	return f.Enabled() && (pol.MayPage() || pol.MayTrackReads())
}

// pagePayload is a page job's payload: IDs and the target, never content.
type pagePayload struct {
	Room     string              `json:"room"`
	EventID  string              `json:"event_id"`
	Sender   string              `json:"sender"`
	Target   string              `json:"target"`
	Priority policy.PagePriority `json:"priority"`
	Reason   string              `json:"reason"`
	// Watch is, for an escalation's page, the person whose unread message
	// it is: their Accept (or the backup's) ends the escalation.
	Watch string `json:"watch,omitempty"`
}

// DecideEvent pages each of a linked room's targets for a message in it.
// The bot's own messages and those of the service's namespace page no one.
func (f *Feature) DecideEvent(ev *appservice.Event, room *appservice.RoomInfo, pol *policy.Policy, settings policy.Effective, dec *appservice.Decision) {
	if !f.Enabled() || ev.StateKey != nil {
		return
	}
	switch ev.Type {
	case "m.room.encrypted", "m.room.message", "m.sticker":
	default:
		return
	}
	if ev.Sender == f.env.BotUser || strings.HasPrefix(ev.Sender, "@"+f.env.Config.SenderLocalpart()) {
		return
	}
	f.watch(ev, pol, settings, dec)
	keys := f.env.Chain.Keys()
	for _, target := range settings.Page {
		payload, _ := json.Marshal(pagePayload{Room: ev.RoomID, EventID: ev.ID, Sender: ev.Sender, Target: target, Priority: settings.PagePriority, Reason: "linked"})
		outcome := audit.OutcomeSuccess
		if settings.DryRun {
			outcome = audit.OutcomeWould
		}
		dec.AddRecorded(appservice.JobSpec{Kind: JobPage, DedupeKey: "page:" + ev.ID + ":" + target, Payload: payload, DryRun: settings.DryRun},
			&audit.Record{Type: audit.TypePolicyDecision, Outcome: outcome, Room: keys.Room(ev.RoomID), EventID: ev.ID, EventType: ev.Type,
				Action: JobPage, Detail: "linked", PolicyVersion: pol.Hash})
	}
}

// PageID is the message ID a page job's page is known by at the gateway:
// 22 characters of a digest of its dedupe key (WCTP allows 32).
func PageID(dedupeKey string) string {
	sum := sha256.Sum256([]byte(dedupeKey))
	return "hp" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:])[:20])
}

// refAlphabet has no 0/O, 1/I/L: a reference is read off a pager screen.
const refAlphabet = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"

// Ref is a page's opaque reference: 5 characters of its ID's digest.
func Ref(pageID string) string {
	sum := sha256.Sum256([]byte("ref:" + pageID))
	b := make([]byte, 5)
	for i := range b {
		b[i] = refAlphabet[int(sum[i])%len(refAlphabet)]
	}
	return string(b)
}

// Render is the page text: the template with {ref} and {priority}, cut to
// max characters. What is cut is the template's own words, never the
// reference: a page must still name its message.
func Render(template, ref string, pri policy.PagePriority, max int) string {
	fill := strings.NewReplacer("{priority}", strings.ToUpper(string(pri))).Replace
	before, after, hasRef := strings.Cut(template, "{ref}")
	before, after = fill(before), fill(after)
	text := before
	if hasRef {
		text += ref + after
	}
	if max <= 0 || utf8.RuneCountInString(text) <= max {
		return text
	}
	tail := []rune(after)
	if hasRef {
		// The word just before the reference stays with it ("(ref ").
		glue := strings.LastIndex(strings.TrimRight(before, " "), " ") + 1
		tail = []rune(before[glue:] + ref + after)
		before = before[:glue]
	}
	if len(tail) >= max {
		return string(tail[:max])
	}
	return string([]rune(before)[:min(len([]rune(before)), max-len(tail))]) + string(tail)
}

// page is a page's row.
type page struct {
	ID, Ref, Room, EventID, Target, User, Gateway, Recipient, Priority, Reason, State, Tag, Watch, Sender string
	Unknown                                                                                               int
}

// States a page goes through; a later one never goes back to an earlier.
var stateRank = map[string]int{"sending": 0, "sent": 1, "queued": 2, "delivered": 3, "read": 4, "replied": 5, "declined": 5, "accepted": 6, "failed": 6, "skipped": 6}

func (f *Feature) loadPage(ctx context.Context, tx *sql.Tx, id string) (*page, error) {
	p := &page{}
	err := f.env.DB.QueryRow(ctx, tx, `SELECT id, ref, room_id, event_id, target, user_id, gateway, recipient, priority, reason, state, tag, unknown_sends, watch_user, sender FROM page WHERE id = ?`, id).
		Scan(&p.ID, &p.Ref, &p.Room, &p.EventID, &p.Target, &p.User, &p.Gateway, &p.Recipient, &p.Priority, &p.Reason, &p.State, &p.Tag, &p.Unknown, &p.Watch, &p.Sender)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	return p, err
}

func (f *Feature) record(ctx context.Context, tx *sql.Tx, p *page, action, outcome string, jobID int64) error {
	keys := f.env.Chain.Keys()
	return f.env.Chain.Append(ctx, tx, &audit.Record{Type: audit.TypePage, Outcome: outcome, Actor: keys.User(p.User), Room: keys.Room(p.Room),
		EventID: p.EventID, Action: action, Detail: p.Gateway + " " + p.Ref, JobID: jobID})
}

// sendPage sends one page. The person is resolved (a role through the
// schedule) the first time the job runs and kept: a retry after an outage
// pages whoever was on call when the message came. A failure the gateway
// calls temporary is retried with backoff; one whose outcome is unknown
// (the gateway may have taken the page) is audited as such before the
// retry, so a duplicate page is accounted for.
func (f *Feature) sendPage(ctx context.Context, j *appservice.Job) error {
	pl, err := appservice.DecodePayload[pagePayload](j)
	if err != nil {
		return appservice.Permanent(err)
	}
	id := PageID(j.Key)
	now := f.env.Now()
	var p *page
	var refusal error
	dir, sched := f.files() // one snapshot for resolving and sending
	err = f.env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		var err error
		if p, err = f.loadPage(ctx, tx, id); err != nil || p != nil {
			return err
		}
		p = &page{ID: id, Ref: Ref(id), Room: pl.Room, EventID: pl.EventID, Target: pl.Target, Priority: string(pl.Priority), Reason: pl.Reason, State: "sending"}
		p.User = pl.Target
		if role, ok := strings.CutPrefix(pl.Target, "role:"); ok {
			p.User = sched.OnCall(role, now)
			if p.User == "" {
				refusal = fmt.Errorf("nobody is on call for role %s", role)
			}
		}
		if refusal == nil && p.User == pl.Sender {
			p.State = "skipped" // the person paged wrote the message
		} else if refusal == nil {
			pg, ok := dir.Lookup(p.User)
			if !ok {
				refusal = errors.New("the person paged has no pager in the directory")
			} else {
				p.Gateway, p.Recipient = pg.Gateway, pg.Recipient
			}
		}
		if refusal != nil {
			p.State = "failed"
		}
		_, err = f.env.DB.Exec(ctx, tx, `INSERT INTO page (id, ref, room_id, event_id, target, user_id, gateway, recipient, priority, reason, state, tag, created_at, sent_at, updated_at, unknown_sends, watch_user, sender)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', ?, 0, ?, 0, ?, ?)`, p.ID, p.Ref, p.Room, p.EventID, p.Target, p.User, p.Gateway, p.Recipient, p.Priority, p.Reason, p.State, now.UnixMilli(), now.UnixMilli(), pl.Watch, pl.Sender)
		if err != nil {
			return err
		}
		if p.State == "skipped" {
			return f.record(ctx, tx, p, "skipped", audit.OutcomeSuccess, j.ID)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if refusal != nil {
		return appservice.Permanent(refusal)
	}
	if p.State != "sending" {
		return nil // sent (or skipped) before a crash
	}
	if j.DryRun {
		return nil
	}
	t := f.Transports[p.Gateway]
	if t == nil {
		if err := f.broken[p.Gateway]; err != nil {
			return appservice.Permanent(err)
		}
		return appservice.Permanent(fmt.Errorf("gateway %s is not in the config", p.Gateway))
	}
	pg, _ := dir.Lookup(p.User)
	g := f.gateways[p.Gateway]
	max := g.Length()
	if pg.MaxLength > 0 && pg.MaxLength < max {
		max = pg.MaxLength
	} else if n, ok := f.lengths.Load(p.Gateway + " " + p.Recipient); ok && pg.MaxLength == 0 && n.(int) < max {
		max = n.(int)
	}
	out := Outgoing{ID: p.ID, Recipient: p.Recipient, PIN: pg.PIN, Text: Render(f.cfg.Template, p.Ref, policy.PagePriority(p.Priority), max),
		Priority: policy.PagePriority(p.Priority), TwoWay: pg.TwoWay, Submitted: now}
	if pg.MultipleChoice {
		out.Choices = []string{"Accept", "Decline"}
	}
	tag, serr := t.Send(ctx, out)
	done := f.env.Now()
	var result error
	err = f.env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		result = nil
		if serr == nil {
			if _, err := f.env.DB.Exec(ctx, tx, `UPDATE page SET state = 'sent', tag = ?, sent_at = ?, updated_at = ? WHERE id = ? AND state = 'sending'`, tag, done.UnixMilli(), done.UnixMilli(), p.ID); err != nil {
				return err
			}
			return f.record(ctx, tx, p, "sent", audit.OutcomeSuccess, j.ID)
		}
		var se *SendError
		if !errors.As(serr, &se) {
			se = &SendError{Err: serr, Temporary: true}
		}
		if se.Unknown {
			if _, err := f.env.DB.Exec(ctx, tx, `UPDATE page SET unknown_sends = unknown_sends + 1, updated_at = ? WHERE id = ?`, done.UnixMilli(), p.ID); err != nil {
				return err
			}
			if err := f.record(ctx, tx, p, "outcome-unknown", audit.OutcomeFailure, j.ID); err != nil {
				return err
			}
		}
		if se.Temporary {
			result = serr // retried with backoff; what is above is kept
			return nil
		}
		result = appservice.Permanent(serr)
		_, err := f.env.DB.Exec(ctx, tx, `UPDATE page SET state = 'failed', updated_at = ? WHERE id = ?`, done.UnixMilli(), p.ID)
		return err
	})
	if err != nil {
		return err
	}
	if serr == nil {
		f.env.Metrics.PagesSent.WithLabelValues(p.Gateway).Inc()
		f.env.Metrics.PageLatency.WithLabelValues(p.Gateway).Observe(done.Sub(j.Created).Seconds())
	}
	return result
}

// lookupLengths asks WCTP gateways (LookupSubscriber) what each device in
// the directory without a max_length shows; a gateway that does not answer
// leaves the gateway's length in force.
func (f *Feature) lookupLengths(ctx context.Context, d *Directory) {
	for _, pg := range d.Pagers {
		t, ok := f.Transports[pg.Gateway].(*wctpTransport)
		if !ok || pg.MaxLength > 0 {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		caps, err := t.lookup(lctx, pg.Recipient)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			f.env.Log.Debug().Str("gateway", pg.Gateway).Str("error", err.Error()).Msg("LookupSubscriber failed; the gateway's length applies")
			continue
		}
		if caps.MaxLength >= 40 {
			f.lengths.Store(pg.Gateway+" "+pg.Recipient, caps.MaxLength)
		}
	}
}

package pager

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/matrix-hipaa/matrix-hipaa/appservice"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/audit"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/bridges/wctp"
	"github.com/matrix-hipaa/matrix-hipaa/config"
)

// noticePayload is what a room is told of a page. Text is a pager user's
// free-text reply, posted in the (encrypted) room; it is never audited.
type noticePayload struct {
	Page string `json:"page"`
	What string `json:"what"`
	Text string `json:"text,omitempty"`
}

// Receive stores a status or reply a gateway pushed (or a poll returned),
// once: a gateway re-sends until confirmed, so a repeat is confirmed and
// changes nothing. It moves the page's state on (never back), audits it and
// queues the room's notice, in one transaction.
func (f *Feature) Receive(ctx context.Context, gateway string, in wctp.Inbound) error {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%s\x00%s\x00%d\x00%s\x00%v\x00%d", in.Kind, in.MessageID, in.Status, in.FailureCode, in.Text, in.Choice, in.At.UnixMilli())))
	key := hex.EncodeToString(sum[:16])
	now := f.env.Now()
	kind := in.Kind
	err := f.env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		res, err := f.env.DB.Exec(ctx, tx, `INSERT INTO page_inbound (gateway, key, page_id, kind, received_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			gateway, key, in.MessageID, in.Kind, now.UnixMilli())
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			kind = "duplicate"
			return nil
		}
		p, err := f.loadPage(ctx, tx, in.MessageID)
		if err != nil {
			return err
		}
		if p == nil || p.Gateway != gateway {
			kind = "unknown"
			return nil
		}
		what, state := classify(in)
		if what == "" {
			return nil
		}
		if stateRank[state] > stateRank[p.State] || (state == "replied" && p.State == "replied") {
			if _, err := f.env.DB.Exec(ctx, tx, `UPDATE page SET state = ?, updated_at = ? WHERE id = ?`, state, now.UnixMilli(), p.ID); err != nil {
				return err
			}
		}
		if state == "accepted" {
			if err := f.accepted(ctx, tx, p); err != nil {
				return err
			}
		}
		outcome := audit.OutcomeSuccess
		if what == "failed" {
			outcome = audit.OutcomeFailure
		}
		if err := f.record(ctx, tx, p, what, outcome, 0); err != nil {
			return err
		}
		np := noticePayload{Page: p.ID, What: what}
		if what == "reply" {
			np.Text = in.Text
		}
		payload, _ := json.Marshal(np)
		return appservice.Enqueue(ctx, f.env.DB, tx, now, appservice.JobSpec{Kind: JobNotice, DedupeKey: "page_notice:" + gateway + ":" + key, Payload: payload})
	})
	if err != nil {
		return err
	}
	f.env.Metrics.PageInbound.WithLabelValues(gateway, kind).Inc()
	f.env.Wake()
	return nil
}

// classify turns a status or reply into what the room is told and the
// page's new state. An Accept (a choice, or the word) accepts the page; a
// Decline declines it; other text is a reply.
func classify(in wctp.Inbound) (what, state string) {
	switch in.Kind {
	case wctp.KindStatus:
		switch {
		case in.FailureCode > 0:
			return "failed", "failed"
		case in.Status == wctp.Queued:
			return "queued", "queued"
		case in.Status == wctp.Delivered:
			return "delivered", "delivered"
		case in.Status == wctp.Read:
			return "read", "read"
		}
	case wctp.KindReply:
		switch strings.ToLower(strings.TrimSpace(in.Text)) {
		case "accept", "accepted", "ack", "yes", "ok":
			return "accepted", "accepted"
		case "decline", "declined", "no":
			return "declined", "declined"
		}
		return "reply", "replied"
	}
	return "", ""
}

// notice tells the room what became of a page: delivered, read, accepted,
// declined, failed, or a free-text reply.
func (f *Feature) notice(ctx context.Context, j *appservice.Job) error {
	np, err := appservice.DecodePayload[noticePayload](j)
	if err != nil {
		return appservice.Permanent(err)
	}
	var p *page
	if err := f.env.DB.Tx(ctx, store.Durable, func(tx *sql.Tx) error {
		var err error
		p, err = f.loadPage(ctx, tx, np.Page)
		return err
	}); err != nil {
		return err
	}
	if p == nil {
		return appservice.Permanent(fmt.Errorf("page %s is not known", np.Page))
	}
	if f.Notice == nil {
		return appservice.Permanent(fmt.Errorf("no bot to post the notice"))
	}
	var text string
	switch np.What {
	case "reply":
		text = fmt.Sprintf("Reply from %s's pager (ref %s): %s", p.User, p.Ref, oneLine(np.Text))
	case "failed":
		text = fmt.Sprintf("The page to %s could not be delivered (ref %s).", p.User, p.Ref)
	default:
		text = fmt.Sprintf("Page to %s %s (ref %s).", p.User, np.What, p.Ref)
	}
	// A bot not yet in the room (rooms created encrypted never needed
	// it) is invited by the message's sender, where they are local.
	inviter := ""
	if appservice.SameServer(p.Sender, f.env.BotUser) {
		inviter = p.Sender
	}
	return f.Notice.SendNotice(ctx, p.Room, inviter, "", text, fmt.Sprintf("hipaa-job-%d", j.ID))
}

func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
	if len(s) > 1000 {
		s = s[:1000]
	}
	return s
}

// poll asks a gateway that cannot push for its statuses and replies,
// acknowledging each batch in the next poll once it is stored.
func (f *Feature) poll(ctx context.Context, name string, g config.Gateway) {
	t, ok := f.Transports[name].(*wctpTransport)
	if !ok {
		return
	}
	var ack []string
	every := g.PollInterval.D()
	for {
		msgs, next, err := t.c.Poll(ctx, ack, 50)
		ack = nil
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			f.env.Log.Warn().Str("gateway", name).Str("error", err.Error()).Msg("WCTP poll failed; trying again")
		}
		stored := 0
		for _, m := range msgs {
			if m.Inbound.Kind == wctp.KindOther {
				ack = append(ack, m.Seq)
				continue
			}
			if err := f.Receive(ctx, name, m.Inbound); err != nil {
				f.env.Log.Warn().Str("gateway", name).Str("error", appservice.SafeError(err)).Msg("could not store a polled message; it is not acknowledged")
				continue
			}
			ack = append(ack, m.Seq)
			stored++
		}
		wait := every
		if next > wait {
			wait = next
		}
		if stored > 0 && stored == len(msgs) {
			wait = 0 // more may wait; acknowledge these at once
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// pollStatus asks a level 3 SNPP gateway (MSTAtus) about its pages that
// are sent and not yet answered (the last day's), every poll interval; a
// status that moves a page on is stored like a pushed one.
func (f *Feature) pollStatus(ctx context.Context, name string, g config.Gateway) {
	t, ok := f.Transports[name].(*snppTransport)
	if !ok {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(g.PollInterval.D()):
		}
		since := f.env.Now().Add(-24 * time.Hour).UnixMilli()
		rows, err := f.env.DB.R.QueryContext(ctx, `SELECT id, tag, state FROM page WHERE gateway = $1 AND tag <> '' AND created_at >= $2
			AND state IN ('sent', 'queued', 'delivered', 'read') ORDER BY created_at LIMIT 500`, name, since)
		if err != nil {
			f.env.Log.Warn().Str("gateway", name).Str("error", appservice.SafeError(err)).Msg("could not list pages to ask about")
			continue
		}
		type open struct{ id, tag, state string }
		var pages []open
		for rows.Next() {
			var o open
			if rows.Scan(&o.id, &o.tag, &o.state) == nil {
				pages = append(pages, o)
			}
		}
		rows.Close()
		for _, o := range pages {
			in, err := t.status(ctx, o.id, o.tag)
			if err != nil {
				if ctx.Err() == nil {
					f.env.Log.Warn().Str("gateway", name).Str("error", err.Error()).Msg("MSTAtus failed; asking again next interval")
				}
				break
			}
			if _, state := classify(in); stateRank[state] <= stateRank[o.state] && in.Kind != wctp.KindReply {
				continue // nothing new
			}
			if err := f.Receive(ctx, name, in); err != nil {
				f.env.Log.Warn().Str("gateway", name).Str("error", appservice.SafeError(err)).Msg("could not store a page's status")
			}
		}
	}
}

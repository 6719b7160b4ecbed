package homeserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"maunium.net/go/mautrix"
)

// Synapse's admin API, read side: what the service lists to find what no
// transaction tells it (users' pushers, rooms it has never heard from).
// Each call acts as admin, a server admin (the bot).

// adminPages is how far a listing is followed: a bound against a server
// that hands out next tokens for ever.
const adminPages = 10000

// LocalUsers lists the homeserver's active, non-guest local users, on the
// bot's own session (see BotSession).
func (c *Client) LocalUsers(ctx context.Context) ([]string, error) {
	cli, err := c.session()
	if err != nil {
		return nil, err
	}
	return listAll(ctx, cli, mautrix.SynapseAdminURLPath{"v2", "users"}, map[string]string{"guests": "false", "deactivated": "false"}, "users", "name", "next_token")
}

// Pusher is one of a user's pushers as far as content goes: whether its
// push gateway is sent only event IDs (format event_id_only) or the event
// itself, which a phone may show on its lock screen.
type Pusher struct {
	Kind        string
	AppID       string
	EventIDOnly bool
}

// UserPushers lists user's pushers through Synapse's admin API.
func (c *Client) UserPushers(ctx context.Context, admin, user string) ([]Pusher, error) {
	cli, err := c.as(admin)
	if err != nil {
		return nil, err
	}
	return listPushers(ctx, cli, cli.BuildURL(mautrix.SynapseAdminURLPath{"v1", "users", user, "pushers"}))
}

// OwnPushers lists user's pushers as the user sees them (the client API,
// acting as them: any homeserver).
func (c *Client) OwnPushers(ctx context.Context, user string) ([]Pusher, error) {
	cli, err := c.as(user)
	if err != nil {
		return nil, err
	}
	return listPushers(ctx, cli, cli.BuildClientURL("v3", "pushers"))
}

func listPushers(ctx context.Context, cli *mautrix.Client, url string) ([]Pusher, error) {
	var resp struct {
		Pushers []struct {
			Kind  string `json:"kind"`
			AppID string `json:"app_id"`
			Data  struct {
				Format string `json:"format"`
			} `json:"data"`
		} `json:"pushers"`
	}
	if _, err := cli.MakeRequest(ctx, http.MethodGet, url, nil, &resp); err != nil {
		return nil, err
	}
	out := make([]Pusher, 0, len(resp.Pushers))
	for _, p := range resp.Pushers {
		out = append(out, Pusher{Kind: p.Kind, AppID: p.AppID, EventIDOnly: p.Data.Format == "event_id_only"})
	}
	return out, nil
}

// AllRooms lists every room the homeserver knows of.
func (c *Client) AllRooms(ctx context.Context, admin string) ([]string, error) {
	cli, err := c.as(admin)
	if err != nil {
		return nil, err
	}
	return listAll(ctx, cli, mautrix.SynapseAdminURLPath{"v1", "rooms"}, nil, "rooms", "room_id", "next_batch")
}

// listAll follows an admin listing page by page (from, limit, and the next
// token each page gives) and collects one string field of its items.
func listAll(ctx context.Context, cli *mautrix.Client, path mautrix.SynapseAdminURLPath, query map[string]string, listKey, field, nextKey string) ([]string, error) {
	var out []string
	from := "0"
	for range adminPages {
		q := map[string]string{"from": from, "limit": "500"}
		for k, v := range query {
			q[k] = v
		}
		var page map[string]json.RawMessage
		if _, err := cli.MakeRequest(ctx, http.MethodGet, cli.BuildURLWithQuery(path, q), nil, &page); err != nil {
			return nil, err
		}
		var items []map[string]any
		if err := json.Unmarshal(page[listKey], &items); err != nil {
			return nil, fmt.Errorf("admin listing %s: %w", listKey, err)
		}
		for _, it := range items {
			if v, ok := it[field].(string); ok {
				out = append(out, v)
			}
		}
		var next any
		json.Unmarshal(page[nextKey], &next)
		if from = token(next); from == "" || len(items) == 0 {
			return out, nil
		}
	}
	return out, nil
}

// AdminRoomState is a room's current state read through the admin API:
// no member is needed to read it.
func (c *Client) AdminRoomState(ctx context.Context, admin, room string) ([]json.RawMessage, error) {
	cli, err := c.as(admin)
	if err != nil {
		return nil, err
	}
	var resp struct {
		State []json.RawMessage `json:"state"`
	}
	_, err = cli.MakeRequest(ctx, http.MethodGet, cli.BuildURL(mautrix.SynapseAdminURLPath{"v1", "rooms", room, "state"}), nil, &resp)
	return resp.State, err
}

// token reads a listing's next token, which Synapse gives as a number or a
// string, and leaves out when there is no more.
func token(v any) string {
	switch t := v.(type) {
	case string:
		return t
	case float64:
		return strconv.FormatInt(int64(t), 10)
	}
	return ""
}

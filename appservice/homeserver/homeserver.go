// Package homeserver is what the service can do to a homeserver, through the
// standard client-server API with the application service's token, acting as
// any user in its namespace.
package homeserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto/signatures"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"
)

// Client acts on the homeserver.
type Client struct {
	address string
	asToken string
	http    *http.Client
	// BotSession gives the bot's own access token, for the few calls that
	// cannot act through the application service's masquerade: Synapse's
	// user listing reads ?user_id= as a filter, so acting as the bot there
	// lists only the bot.
	BotSession func() (string, error)
}

func New(address, asToken string) *Client {
	return &Client{address: address, asToken: asToken, http: &http.Client{Timeout: 30 * time.Second}}
}

// as returns a client that acts as user (the ?user_id= of the AS API).
func (c *Client) as(user string) (*mautrix.Client, error) {
	cli, err := mautrix.NewClient(c.address, id.UserID(user), c.asToken)
	if err != nil {
		return nil, err
	}
	cli.SetAppServiceUserID = true
	cli.Client = c.http
	cli.DefaultHTTPRetries = 0 // the job runner retries, durably
	return cli, nil
}

// session returns a client on the bot's own session.
func (c *Client) session() (*mautrix.Client, error) {
	if c.BotSession == nil {
		return nil, errors.New("no bot session to make this request with")
	}
	token, err := c.BotSession()
	if err != nil {
		return nil, err
	}
	cli, err := mautrix.NewClient(c.address, "", token)
	if err != nil {
		return nil, err
	}
	cli.Client = c.http
	cli.DefaultHTTPRetries = 0
	return cli, nil
}

// Ping asks the homeserver to ping the application service registered as
// asID (POST /_matrix/client/v1/appservice/{asID}/ping, acting as user): a
// homeserver that had backed off after failed transactions sends what is
// waiting at once. It returns the round trip the homeserver measured.
func (c *Client) Ping(ctx context.Context, user, asID, txnID string) (time.Duration, error) {
	cli, err := c.as(user)
	if err != nil {
		return 0, err
	}
	resp, err := cli.AppservicePing(ctx, asID, txnID)
	if err != nil {
		return 0, err
	}
	return time.Duration(resp.DurationMS) * time.Millisecond, nil
}

// Redact redacts eventID as user. A user may always redact their own events,
// so acting as the sender needs no power level. txnID makes a retry a no-op.
func (c *Client) Redact(ctx context.Context, user, room, eventID, reason, txnID string) error {
	cli, err := c.as(user)
	if err != nil {
		return err
	}
	_, err = cli.RedactEvent(ctx, id.RoomID(room), id.EventID(eventID), mautrix.ReqRedact{Reason: reason, TxnID: txnID})
	return err
}

// SendState sets a state event as user.
func (c *Client) SendState(ctx context.Context, user, room, eventType, stateKey string, content any) error {
	cli, err := c.as(user)
	if err != nil {
		return err
	}
	_, err = cli.SendStateEvent(ctx, id.RoomID(room), event.Type{Type: eventType, Class: event.StateEventType}, stateKey, content)
	return err
}

// Invite invites invitee to room as user (a member who may invite).
func (c *Client) Invite(ctx context.Context, user, room, invitee string) error {
	cli, err := c.as(user)
	if err != nil {
		return err
	}
	_, err = cli.InviteUser(ctx, id.RoomID(room), &mautrix.ReqInviteUser{UserID: id.UserID(invitee)})
	return err
}

// ErrNoQuarantine is returned where the homeserver offers no way to
// quarantine media.
var ErrNoQuarantine = errors.New("this homeserver offers no media quarantine API; the file stays downloadable by its mxc:// link")

// QuarantineMedia quarantines an mxc:// URI through Synapse's admin API,
// acting as user (who must be a server admin: make the bot one). On other
// homeservers it returns ErrNoQuarantine.
func (c *Client) QuarantineMedia(ctx context.Context, software, user, mxc string) error {
	cli, uri, err := c.synapseMedia(software, user, mxc, ErrNoQuarantine)
	if err != nil {
		return err
	}
	_, err = cli.MakeRequest(ctx, http.MethodPost, cli.BuildURL(mautrix.SynapseAdminURLPath{"v1", "media", "quarantine", uri.Homeserver, uri.FileID}), struct{}{}, nil)
	return err
}

// synapseMedia is what each of Synapse's media admin calls starts with: a
// client acting as user (a server admin) and the file's mxc URI parsed; on
// other homeservers, none (the caller's error).
func (c *Client) synapseMedia(software, user, mxc string, none error) (*mautrix.Client, id.ContentURI, error) {
	if software != "synapse" {
		return nil, id.ContentURI{}, none
	}
	uri, err := id.ParseContentURI(mxc)
	if err != nil {
		return nil, id.ContentURI{}, fmt.Errorf("not an mxc URI: %w", err)
	}
	cli, err := c.as(user)
	return cli, uri, err
}

// ErrNoMediaDelete is returned where the homeserver offers no way to
// delete a file from its media repository.
var ErrNoMediaDelete = errors.New("this homeserver offers no media delete API; the file stays in its media repository")

// MediaUploader is who uploaded a file of this homeserver's media
// repository (Synapse's admin API, GET /_synapse/admin/v1/media/{server}/
// {id}, acting as user, a server admin); "" for a file it has no uploader
// of (remote media). On other homeservers it returns ErrNoMediaDelete.
func (c *Client) MediaUploader(ctx context.Context, software, user, mxc string) (string, error) {
	cli, uri, err := c.synapseMedia(software, user, mxc, ErrNoMediaDelete)
	if err != nil {
		return "", err
	}
	var resp struct {
		MediaInfo struct {
			UserID *string `json:"user_id"`
		} `json:"media_info"`
	}
	if _, err := cli.MakeRequest(ctx, http.MethodGet, cli.BuildURL(mautrix.SynapseAdminURLPath{"v1", "media", uri.Homeserver, uri.FileID}), nil, &resp); err != nil {
		return "", err
	}
	if resp.MediaInfo.UserID == nil {
		return "", nil
	}
	return *resp.MediaInfo.UserID, nil
}

// DeleteMedia deletes a file of this homeserver's media repository through
// Synapse's admin API (DELETE /_synapse/admin/v1/media/{server}/{id}),
// acting as user (a server admin: the bot). A file already gone is not an
// error. On other homeservers it returns ErrNoMediaDelete.
func (c *Client) DeleteMedia(ctx context.Context, software, user, mxc string) error {
	cli, uri, err := c.synapseMedia(software, user, mxc, ErrNoMediaDelete)
	if err != nil {
		return err
	}
	_, err = cli.MakeRequest(ctx, http.MethodDelete, cli.BuildURL(mautrix.SynapseAdminURLPath{"v1", "media", uri.Homeserver, uri.FileID}), nil, nil)
	if errors.Is(err, mautrix.MNotFound) {
		return nil
	}
	return err
}

// RoomState returns a room's current state events as user (a member).
func (c *Client) RoomState(ctx context.Context, user, room string) ([]json.RawMessage, error) {
	cli, err := c.as(user)
	if err != nil {
		return nil, err
	}
	var out []json.RawMessage
	_, err = cli.MakeRequest(ctx, http.MethodGet, cli.BuildClientURL("v3", "rooms", room, "state"), nil, &out)
	return out, err
}

// StateContent reads one state event's content as user (a member); a
// missing event is mautrix.MNotFound.
func (c *Client) StateContent(ctx context.Context, user, room, eventType, stateKey string) (map[string]any, error) {
	cli, err := c.as(user)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	err = cli.StateEvent(ctx, id.RoomID(room), event.Type{Type: eventType, Class: event.StateEventType}, stateKey, &out)
	return out, err
}

// PurgeHistory asks Synapse to delete a room's non-state events older than
// upToMillis, local ones included (admin API, acting as user, who must be a
// server admin), and waits for the purge, which Synapse runs in the
// background, to finish. Synapse keeps the newest event before the bound
// (it purges below that event's depth), so a room always keeps one event
// to build on. Nothing before the bound is ErrNothingToPurge.
func (c *Client) PurgeHistory(ctx context.Context, user, room string, upToMillis int64) error {
	cli, err := c.as(user)
	if err != nil {
		return err
	}
	body := map[string]any{"purge_up_to_ts": upToMillis, "delete_local_events": true}
	var started struct {
		PurgeID string `json:"purge_id"`
	}
	_, err = cli.MakeRequest(ctx, http.MethodPost, cli.BuildURL(mautrix.SynapseAdminURLPath{"v1", "purge_history", room}), body, &started)
	if errors.Is(err, mautrix.MNotFound) {
		return ErrNothingToPurge
	}
	if err != nil || started.PurgeID == "" {
		return err
	}
	// A purge of years of history can take long; past this the job is
	// tried again later (a second purge of the same range is harmless).
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	for wait := 100 * time.Millisecond; ; wait = min(wait*2, 5*time.Second) {
		var status struct {
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if _, err := cli.MakeRequest(ctx, http.MethodGet, cli.BuildURL(mautrix.SynapseAdminURLPath{"v1", "purge_history_status", started.PurgeID}), nil, &status); err != nil {
			return err
		}
		switch status.Status {
		case "complete":
			return nil
		case "failed":
			return fmt.Errorf("%w: %s", ErrPurgeFailed, status.Error)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

var (
	// ErrNothingToPurge: the room has no event before the bound.
	ErrNothingToPurge = errors.New("no event to purge before the bound")
	// ErrPurgeFailed: Synapse ran the purge and it failed.
	ErrPurgeFailed = errors.New("synapse's purge failed")
)

// SignOutEverywhere ends every session of user (POST /logout/all acting as
// them): their clients' next request gets M_UNKNOWN_TOKEN. The appservice's
// own token is not a session of the user and keeps working.
func (c *Client) SignOutEverywhere(ctx context.Context, user string) error {
	cli, err := c.as(user)
	if err != nil {
		return err
	}
	_, err = cli.MakeRequest(ctx, http.MethodPost, cli.BuildClientURL("v3", "logout", "all"), struct{}{}, nil)
	return err
}

// Membership returns user's current membership event in room (its ID and
// membership), read from the room's state as actAs, a member.
func (c *Client) Membership(ctx context.Context, actAs, room, user string) (eventID, membership string, err error) {
	state, err := c.RoomState(ctx, actAs, room)
	if err != nil {
		return "", "", err
	}
	for _, raw := range state {
		var e struct {
			ID       string `json:"event_id"`
			Type     string `json:"type"`
			StateKey string `json:"state_key"`
			Content  struct {
				Membership string `json:"membership"`
			} `json:"content"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Type == "m.room.member" && e.StateKey == user {
			return e.ID, e.Content.Membership, nil
		}
	}
	return "", "", nil
}

// Kick removes user from room (or withdraws their invite) acting as actAs,
// with a reason the user sees.
func (c *Client) Kick(ctx context.Context, actAs, room, user, reason string) error {
	cli, err := c.as(actAs)
	if err != nil {
		return err
	}
	_, err = cli.KickUser(ctx, id.RoomID(room), &mautrix.ReqKickUser{UserID: id.UserID(user), Reason: reason})
	return err
}

// DeleteDevices deletes some of user's devices, and the sessions with them,
// through Synapse's admin API, acting as admin (a server admin: the bot).
func (c *Client) DeleteDevices(ctx context.Context, admin, user string, devices []string) error {
	cli, err := c.as(admin)
	if err != nil {
		return err
	}
	body := map[string]any{"devices": devices}
	_, err = cli.MakeRequest(ctx, http.MethodPost, cli.BuildURL(mautrix.SynapseAdminURLPath{"v2", "users", user, "delete_devices"}), body, nil)
	return err
}

// Deactivate deactivates user's account through Synapse's admin API, acting
// as admin; their messages stay (erase is false: retention and holds decide).
func (c *Client) Deactivate(ctx context.Context, admin, user string) error {
	cli, err := c.as(admin)
	if err != nil {
		return err
	}
	_, err = cli.MakeRequest(ctx, http.MethodPost, cli.BuildURL(mautrix.SynapseAdminURLPath{"v1", "deactivate", user}), map[string]any{"erase": false}, nil)
	return err
}

// Devices lists user's devices (acting as them).
func (c *Client) Devices(ctx context.Context, user string) ([]string, error) {
	sessions, err := c.Sessions(ctx, user)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(sessions))
	for _, d := range sessions {
		out = append(out, d.ID)
	}
	return out, nil
}

// JoinedRooms lists the rooms user is in.
func (c *Client) JoinedRooms(ctx context.Context, user string) ([]string, error) {
	cli, err := c.as(user)
	if err != nil {
		return nil, err
	}
	resp, err := cli.JoinedRooms(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(resp.JoinedRooms))
	for _, r := range resp.JoinedRooms {
		out = append(out, string(r))
	}
	return out, nil
}

// Leave makes user leave room.
func (c *Client) Leave(ctx context.Context, user, room string) error {
	cli, err := c.as(user)
	if err != nil {
		return err
	}
	_, err = cli.LeaveRoom(ctx, id.RoomID(room), &mautrix.ReqLeave{Reason: "offboarded"})
	return err
}

// Device is one of a user's sessions as an admin sees it.
type Device struct {
	ID          string
	DisplayName string
	LastSeen    int64 // unix ms; 0 if never
	// CrossSigned: the device's keys carry a valid signature by the user's
	// self-signing key (checked here, not taken from the homeserver's word).
	CrossSigned bool
	HasKeys     bool
}

// Seen is when the device was last seen, for people: RFC 3339 UTC or "never".
func (d Device) Seen() string {
	if d.LastSeen <= 0 {
		return "never"
	}
	return time.UnixMilli(d.LastSeen).UTC().Format(time.RFC3339)
}

// Trust says whether the user cross-signed the device: yes, no, or "no keys"
// (the device never uploaded encryption keys).
func (d Device) Trust() string {
	switch {
	case !d.HasKeys:
		return "no keys"
	case d.CrossSigned:
		return "yes"
	}
	return "no"
}

// Sessions lists user's devices with when each was last seen (no keys).
func (c *Client) Sessions(ctx context.Context, user string) ([]Device, error) {
	cli, err := c.as(user)
	if err != nil {
		return nil, err
	}
	info, err := cli.GetDevicesInfo(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Device, 0, len(info.Devices))
	for _, d := range info.Devices {
		out = append(out, Device{ID: string(d.DeviceID), DisplayName: d.DisplayName, LastSeen: d.LastSeenTS})
	}
	return out, nil
}

// DeviceInventory lists user's devices with when each was last seen and
// whether the user cross-signed it.
func (c *Client) DeviceInventory(ctx context.Context, user string) ([]Device, error) {
	cli, err := c.as(user)
	if err != nil {
		return nil, err
	}
	sessions, err := c.Sessions(ctx, user)
	if err != nil {
		return nil, err
	}
	uid := id.UserID(user)
	keys, err := cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{uid: mautrix.DeviceIDList{}}})
	if err != nil {
		return nil, err
	}
	var ssk id.Ed25519
	if k, ok := keys.SelfSigningKeys[uid]; ok {
		ssk = k.FirstKey()
	}
	out := make([]Device, 0, len(sessions))
	for _, dev := range sessions {
		if dk, ok := keys.DeviceKeys[uid][id.DeviceID(dev.ID)]; ok {
			dev.HasKeys = true
			if ssk != "" {
				dev.CrossSigned, _ = signatures.VerifySignatureJSON(dk, uid, ssk.String(), ssk)
			}
		}
		out = append(out, dev)
	}
	return out, nil
}

// ResolveAlias looks an alias up in the room directory as user; an alias
// that does not exist is mautrix.MNotFound.
func (c *Client) ResolveAlias(ctx context.Context, user, alias string) (string, error) {
	cli, err := c.as(user)
	if err != nil {
		return "", err
	}
	resp, err := cli.ResolveAlias(ctx, id.RoomAlias(alias))
	if err != nil {
		return "", err
	}
	return string(resp.RoomID), nil
}

// Software is what the homeserver says it runs.
type Software struct {
	Name, Version string
}

// ServerVersion asks the homeserver what it runs: the federation API's
// version endpoint (Dendrite serves it beside the client API), else
// Synapse's admin server_version (Synapse serves federation on a listener
// of its own). Neither needs a token.
func (c *Client) ServerVersion(ctx context.Context) (Software, error) {
	var fed struct {
		Server struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"server"`
	}
	errFed := c.getJSON(ctx, "/_matrix/federation/v1/version", &fed)
	if errFed == nil && fed.Server.Version != "" {
		return Software{Name: fed.Server.Name, Version: fed.Server.Version}, nil
	}
	var syn struct {
		ServerVersion string `json:"server_version"`
	}
	if err := c.getJSON(ctx, "/_synapse/admin/v1/server_version", &syn); err != nil || syn.ServerVersion == "" {
		return Software{}, fmt.Errorf("the homeserver does not say what it runs (federation version: %v; Synapse server_version: %v)", errFed, err)
	}
	return Software{Name: "Synapse", Version: syn.ServerVersion}, nil
}

// getJSON GETs path on the homeserver (no token) into v, reading at most
// 64 KiB.
func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.address, "/")+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(v)
}

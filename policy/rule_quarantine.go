package policy

import (
	"encoding/json"
	"slices"
	"strings"
)

// quarantineRule: an unencrypted attachment that policy removes is also
// quarantined on the homeserver, because redacting the event leaves the file
// itself downloadable by anyone who has its mxc:// link. Stickers are left
// alone: they are shared pack images, not something a person uploaded.
type quarantineRule struct{}

func (quarantineRule) Name() string { return "quarantine" }

const reasonQuarantine = "An unencrypted attachment was removed; its file is quarantined so its link no longer works."

func (r quarantineRule) Check(c *Context) []Action {
	e := c.Event
	if e.StateKey != nil || e.Type != "m.room.message" || !mediaTypes[contentField(e.Content, "msgtype")] {
		return nil
	}
	s := c.Settings
	removed := s.Attachments == AttachmentsEncryptedOnly || (s.Encryption == EncryptionRequired && s.Plaintext == PlaintextRedact)
	if !removed {
		return nil
	}
	var out []Action
	for _, u := range plainMediaURLs(e.Content) {
		out = append(out, Action{Kind: ActQuarantineMedia, Rule: r.Name(), EventID: e.ID, ActAs: e.Sender, Value: u, Reason: reasonQuarantine})
	}
	return out
}

// plainMediaURLs are the unencrypted mxc:// URIs an event points at: the
// file and its thumbnail.
func plainMediaURLs(raw json.RawMessage) []string {
	var c struct {
		URL  string `json:"url"`
		Info struct {
			ThumbnailURL string `json:"thumbnail_url"`
		} `json:"info"`
	}
	if json.Unmarshal(raw, &c) != nil {
		return nil
	}
	var out []string
	for _, u := range []string{c.URL, c.Info.ThumbnailURL} {
		if strings.HasPrefix(u, "mxc://") && !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}

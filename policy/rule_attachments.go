package policy

// attachmentsRule: media sent with a plain url (readable by anyone who has
// the link and stored unencrypted by the server) is removed when policy says
// encrypted_only, even where plaintext text is allowed. Encrypted media
// travels inside m.room.encrypted and is never seen here.
type attachmentsRule struct{}

func (attachmentsRule) Name() string { return "attachments" }

const reasonPlainMedia = "Files and images here must be sent encrypted; an unencrypted attachment was removed."

var mediaTypes = map[string]bool{"m.image": true, "m.file": true, "m.video": true, "m.audio": true}

func (r attachmentsRule) Check(c *Context) []Action {
	e := c.Event
	if e.StateKey != nil || c.Settings.Attachments != AttachmentsEncryptedOnly {
		return nil
	}
	isMedia := e.Type == "m.sticker" || (e.Type == "m.room.message" && mediaTypes[contentField(e.Content, "msgtype")])
	if !isMedia || contentField(e.Content, "url") == "" {
		return nil
	}
	// Already redacted by the plaintext rule: one redaction, one notice.
	if c.Settings.Encryption == EncryptionRequired && c.Settings.Plaintext == PlaintextRedact {
		return nil
	}
	return []Action{
		{Kind: ActRedact, Rule: r.Name(), EventID: e.ID, ActAs: e.Sender, Reason: reasonPlainMedia},
		{Kind: ActNotice, Rule: r.Name(), EventID: e.ID, Target: e.Sender, ActAs: c.Room.Creator, Reason: reasonPlainMedia},
	}
}
